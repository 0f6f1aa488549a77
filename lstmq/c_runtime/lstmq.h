/* lstmq integer runtime: class scores with integer arithmetic only.
 *
 * Generated with a model by `lstmq export --c-dir`: lstmq_model.h / lstmq_model.c hold the
 * model's sizes and tables, lstmq_runtime.c the LSTM and, for a model trained on the integer
 * front end (LSTMQ_FRONTEND 1), the front end: int16 PCM in. A model trained on the float
 * front end (LSTMQ_FRONTEND 0) reads int8 features the host computes and quantizes: the
 * recipe is in lstmq_model.h (LSTMQ_INPUT_*). C99, no malloc, no float or double; every
 * buffer is static (the front end's sized at export: LSTMQ_MAX_FRAMES).
 */
#ifndef LSTMQ_H_
#define LSTMQ_H_

#include <stdint.h>

#include "lstmq_model.h"

#define LSTMQ_ERROR_TOO_LONG (-1)  /* front end: more than LSTMQ_MAX_FRAMES frames in a pass */
#define LSTMQ_ERROR_ARGUMENT (-2)  /* a null pointer or a negative length */

/* The LSTM on int8 features (frames x LSTMQ_N_MFCC): writes LSTMQ_NUM_CLASSES int32 logits
 * (at one common scale) and returns the index of the largest (the first on ties), or a
 * negative LSTMQ_ERROR_*. Any number of frames: it keeps no buffer over time. */
int32_t lstmq_classify_features(const int8_t *features, int32_t frames, int32_t *logits);

#if LSTMQ_FRONTEND
/* Classifies one clip of n samples of int16 PCM at LSTMQ_SAMPLE_RATE Hz (the integer front
 * end, then the LSTM); returns as lstmq_classify_features, and on an error leaves `logits` as
 * it was. With speed votes (LSTMQ_VOTES > 0) the clip is also played at each LSTMQ_VOTE_STEPS
 * speed and the logits of every pass are added.
 * Lengths: clips up to LSTMQ_MAX_SAMPLES samples fit every pass; longer ones are
 * LSTMQ_ERROR_TOO_LONG (lstmq in Python has no such limit: size the buffers with
 * `lstmq export --max-seconds`). Clips under LSTMQ_MIN_SAMPLES are padded with silence, as
 * lstmq's integer path pads them; lstmq's WAV reader refuses clips under 50 ms as broken
 * files, so a device should apply a minimum length of its own (its voice detector's). */
int32_t lstmq_classify(const int16_t *pcm, int32_t n, int32_t *logits);

/* The int8 features the model reads (of the clip as recorded): frames x LSTMQ_N_MFCC values
 * into `features` (room for LSTMQ_MAX_FRAMES frames). Returns the frame count, or a negative
 * error. */
int32_t lstmq_features(const int16_t *pcm, int32_t n, int8_t *features);
#endif

#endif /* LSTMQ_H_ */
