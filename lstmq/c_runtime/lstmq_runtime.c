/* lstmq integer runtime (C99): the integer front end and LSTM of lstmq, bit-exact with
 * lstmq.frontend.integer_mfcc + quantize_features + lstmq.integer.predict_int.
 *
 * Every kernel mirrors its jnp definition in lstmq/fixedpoint.py and lstmq/dsp.py (rounding
 * half up, saturation as there); docs/numerics.md has the table. Only int8/int16/int32
 * values, and int64 for the exact 32 x 32 bit product of rounding_high_mul.
 */
#include "lstmq.h"

/* Right shifts of negative values must be arithmetic (C99 leaves it to the compiler; gcc,
 * clang and arm-none-eabi-gcc shift arithmetically). */
typedef char lstmq_needs_arithmetic_shift[((-1) >> 1) == -1 ? 1 : -1];

#define LSTMQ_BINS (LSTMQ_N_FFT / 2 + 1)
#define LSTMQ_HALF (LSTMQ_N_FFT / 2)
#define LSTMQ_GATES (4 * LSTMQ_HIDDEN)

/* --- kernels (lstmq/fixedpoint.py) ------------------------------------------------------ */

static int32_t rsr(int32_t x, int32_t s) {  /* floor(x / 2^s + 1/2) */
  if (s <= 0) return x;
  if (s >= 32) return 0;
  return (x >> s) + ((x >> (s - 1)) & 1);
}

static int32_t clip32(int32_t x, int32_t low, int32_t high) {
  return x < low ? low : (x > high ? high : x);
}

static int32_t saturating_left_shift(int32_t x, int32_t s) {
  if (s > 31) s = 31;
  if (x > (INT32_MAX >> s)) return INT32_MAX;
  if (x < (INT32_MIN >> s)) return INT32_MIN;
  return (int32_t)((uint32_t)x << s);
}

static int32_t rounding_high_mul(int32_t a, int32_t m) {  /* floor(a m / 2^31 + 1/2) */
  if (a == INT32_MIN && m == INT32_MIN) return INT32_MAX;
  return (int32_t)(((int64_t)a * (int64_t)m + ((int64_t)1 << 30)) >> 31);
}

static int32_t requantize(int32_t acc, int32_t multiplier, int32_t shift) {
  int32_t left = shift < 0 ? -shift : 0, right = shift > 0 ? shift : 0;
  return rsr(rounding_high_mul(saturating_left_shift(acc, left), multiplier), right);
}

#if LSTMQ_UTTERANCE || LSTMQ_READOUT_MEAN
static int32_t rounding_divide(int32_t x, int32_t d) {  /* floor(x / d + 1/2), 1 <= d < 2^30 */
  int32_t q = x / d, r = x % d;
  if (r < 0) { q -= 1; r += d; }
  return q + (2 * r >= d ? 1 : 0);
}
#endif

static int16_t lut(int16_t z, const int16_t *table) {  /* 257-entry Q0.15 table at Q3.12 */
  int32_t u = (int32_t)z + 32768, k = u >> 8, r = u & 255;
  int32_t low = table[k];
  return (int16_t)(low + rsr((table[k + 1] - low) * r, 8));
}

static int32_t fixed_mul_shift(int32_t a, int32_t b, int32_t s) { return rsr(a * b, s); }

#if LSTMQ_FRONTEND
/* --- DSP kernels (lstmq/dsp.py) --------------------------------------------------------- */

static int32_t bit_length(int32_t x) {
  int32_t bits = 0;
  uint32_t v = (uint32_t)x;
  while (v) { bits++; v >>= 1; }
  return bits;
}

static int32_t block_shift(int32_t peak) {
  if (peak <= 0) return 0;
  return clip32(14 - bit_length(peak), -2, 14);
}

static int32_t apply_shift(int32_t v, int32_t s) {
  return s >= 0 ? (int32_t)((uint32_t)v << s) : rsr(v, -s);
}

static int32_t isqrt(int32_t p) {
  int32_t root = 0, bit;
  for (bit = 15; bit >= 0; bit--) {
    int32_t trial = root + ((int32_t)1 << bit);
    if (trial <= p / trial) root = trial;
  }
  return root;
}

static int32_t log2_q10(int32_t e) {
  int32_t exponent, mantissa, index, fraction, low, y;
  if (e < 1) e = 1;
  exponent = bit_length(e) - 1;
  mantissa = (int32_t)((uint32_t)e << (30 - exponent));
  index = (mantissa >> 22) & 255;
  fraction = (mantissa >> 14) & 255;
  low = LSTMQ_LOG2_TABLE[index];
  y = low + rsr((LSTMQ_LOG2_TABLE[index + 1] - low) * fraction, 8);
  return exponent * 1024 + rsr(y, 5);
}

static void complex_mul(int32_t ar, int32_t ai, int32_t wr, int32_t wi, int32_t *tr, int32_t *ti) {
  *tr = rsr(ar * wr - ai * wi, 15);
  *ti = rsr(ar * wi + ai * wr, 15);
}

static int32_t zr[LSTMQ_HALF], zi[LSTMQ_HALF];

static void rfft(const int32_t *u, int32_t *xr, int32_t *xi) {
  int32_t i, half, k;
  for (i = 0; i < LSTMQ_HALF; i++) {
    int32_t m = LSTMQ_BIT_REVERSAL[i];
    zr[i] = u[2 * m];
    zi[i] = u[2 * m + 1];
  }
  for (half = 1; half < LSTMQ_HALF; half *= 2) {
    int32_t step = LSTMQ_HALF / (2 * half), start, j;
    for (start = 0; start < LSTMQ_HALF; start += 2 * half) {
      for (j = 0; j < half; j++) {
        int32_t a = start + j, b = start + j + half, tr, ti;
        complex_mul(zr[b], zi[b], LSTMQ_FFT_TWIDDLE_RE[j * step], LSTMQ_FFT_TWIDDLE_IM[j * step],
                    &tr, &ti);
        zr[b] = rsr(zr[a] - tr, 1);
        zi[b] = rsr(zi[a] - ti, 1);
        zr[a] = rsr(zr[a] + tr, 1);
        zi[a] = rsr(zi[a] + ti, 1);
      }
    }
  }
  for (k = 0; k <= LSTMQ_HALF; k++) {
    int32_t a = k % LSTMQ_HALF, b = (LSTMQ_HALF - k) % LSTMQ_HALF;
    int32_t ar = zr[a], ai = zi[a], br = zr[b], bi = -zi[b];
    int32_t er = rsr(ar + br, 1), ei = rsr(ai + bi, 1);
    int32_t or_ = rsr(ai - bi, 1), oi = rsr(br - ar, 1), tr, ti;
    complex_mul(or_, oi, LSTMQ_SPLIT_TWIDDLE_RE[k], LSTMQ_SPLIT_TWIDDLE_IM[k], &tr, &ti);
    xr[k] = rsr(er + tr, 1);
    xi[k] = rsr(ei + ti, 1);
  }
}

/* --- front end (lstmq/frontend.py) ------------------------------------------------------ */

static int32_t frame[LSTMQ_N_FFT];
static int32_t spectrum_re[LSTMQ_BINS], spectrum_im[LSTMQ_BINS], magnitude[LSTMQ_BINS];
static int32_t logmel[LSTMQ_MAX_FRAMES][LSTMQ_N_MELS];
static int32_t values[LSTMQ_MAX_FRAMES][LSTMQ_N_MFCC];
#ifndef LSTMQ_SPEECH  /* a header written before features.speech_db */
#define LSTMQ_SPEECH -1
#endif
#if LSTMQ_SPEECH >= 0
static uint8_t counted[LSTMQ_MAX_FRAMES];  /* speech frames: those of the utterance statistics */
#define COUNTED(t) counted[t]
#else
#define COUNTED(t) 1  /* every frame: no array, no test */
#endif

#ifndef LSTMQ_VOTES  /* a header written before features.vote_speeds */
#define LSTMQ_VOTES 0
#endif

#ifndef LSTMQ_NOISE_PERCENTILE  /* a header written before features.noise_percentile */
#define LSTMQ_NOISE_PERCENTILE -1
#endif
#if LSTMQ_NOISE_PERCENTILE >= 0
static int32_t band[LSTMQ_MAX_FRAMES];

/* Spectral subtraction (lstmq/frontend.py, _subtract_noise): each band's noise estimate is its
   LSTMQ_NOISE_PERCENTILE-th percentile over the clip's frames; log += gain(log - estimate). */
static void subtract_noise(int32_t frames) {
  const int32_t last = LSTMQ_NOISE_SPAN >> LSTMQ_NOISE_STEP_BITS;
  int32_t m, t, i, rank = (frames - 1) * LSTMQ_NOISE_PERCENTILE / 100;
  for (m = 0; m < LSTMQ_N_MELS; m++) {
    int32_t estimate;
    for (t = 0; t < frames; t++) {  /* insertion sort of the band's values */
      int32_t v = logmel[t][m];
      for (i = t; i > 0 && band[i - 1] > v; i--) band[i] = band[i - 1];
      band[i] = v;
    }
    estimate = band[rank];
    for (t = 0; t < frames; t++) {
      int32_t d = logmel[t][m] - estimate, index, fraction, low, high;
      if (d < 0) d = 0;
      if (d > LSTMQ_NOISE_SPAN) d = LSTMQ_NOISE_SPAN;
      index = d >> LSTMQ_NOISE_STEP_BITS;
      fraction = d & ((1 << LSTMQ_NOISE_STEP_BITS) - 1);
      low = LSTMQ_NOISE_GAIN[index];
      high = LSTMQ_NOISE_GAIN[index < last ? index + 1 : last];
      logmel[t][m] += low + rsr((high - low) * fraction, LSTMQ_NOISE_STEP_BITS);
    }
  }
}
#endif

/* Speed votes (lstmq/speed.py): the pass being computed reads the clip played with this Q16
 * step, sample k by linear interpolation at k * step; 1 << 16 reads it as recorded. */
static uint32_t pass_step = 1u << 16;
static int32_t source_samples;  /* samples of the clip as recorded */

static int32_t played_samples(int32_t n) {  /* samples of the clip played with pass_step */
  return n == 0 ? 0 : (int32_t)((((uint64_t)n << 16) - 1u) / pass_step + 1u);
}

static int32_t played_sample(const int16_t *pcm, int32_t k) {
  uint64_t position = (uint64_t)k * pass_step;
  int32_t i = (int32_t)(position >> 16), w = (int32_t)((position & 0xFFFFu) >> 1);
  int32_t here = pcm[i], next = i + 1 < source_samples ? pcm[i + 1] : here;
  return here + rsr((next - here) * w, 15);  /* between here and next: no saturation */
}

/* Sample `at` of the pass's n samples padded with zeros to `samples` (0 <= at < samples). */
static int32_t input_sample(const int16_t *pcm, int32_t n, int32_t at) {
  int32_t x = at >= n ? 0 : pass_step == 1u << 16 ? pcm[at] : played_sample(pcm, at);
#if LSTMQ_PREEMPHASIS > 0  /* x[k] - rsr(A x[k-1], 15), x[-1] = 0: |value| < 2^16 */
  if (at > 0 && at <= n) {
    int32_t previous = pass_step == 1u << 16 ? pcm[at - 1] : played_sample(pcm, at - 1);
    x -= rsr(LSTMQ_PREEMPHASIS * previous, 15);
  }
#endif
  return x;
}

static void log_mel_frame(const int16_t *pcm, int32_t n, int32_t samples, int32_t t,
                          int32_t *out) {
  int32_t i, k, m, peak = 0, shift;
  for (i = 0; i < LSTMQ_N_FFT; i++) {
    int32_t at = t * LSTMQ_HOP + i - LSTMQ_N_FFT / 2;
    int32_t x = (at >= 0 && at < samples) ? input_sample(pcm, n, at) : 0;
    int32_t v = rsr(x * LSTMQ_WINDOW[i], 15);
    frame[i] = v;
    if ((v < 0 ? -v : v) > peak) peak = v < 0 ? -v : v;
  }
  shift = block_shift(peak);
  for (i = 0; i < LSTMQ_N_FFT; i++) frame[i] = apply_shift(frame[i], shift);
  rfft(frame, spectrum_re, spectrum_im);
  for (k = 0; k < LSTMQ_BINS; k++) {
    magnitude[k] = isqrt(spectrum_re[k] * spectrum_re[k] + spectrum_im[k] * spectrum_im[k]);
  }
  for (m = 0; m < LSTMQ_N_MELS; m++) {  /* band m: bins from LSTMQ_MEL_START[m] on */
    int32_t energy = 0, w, first = LSTMQ_MEL_START[m];
    for (w = LSTMQ_MEL_OFFSET[m]; w < LSTMQ_MEL_OFFSET[m + 1]; w++) {
      energy += LSTMQ_MEL_WEIGHTS[w] * magnitude[first + w - LSTMQ_MEL_OFFSET[m]];
    }
    out[m] = log2_q10(energy) - shift * 1024;
  }
}

/* The front end's values of every frame into `values`; returns the frame count. */
static int32_t front_end(const int16_t *pcm, int32_t n) {
  int32_t samples = n < LSTMQ_MIN_SAMPLES ? LSTMQ_MIN_SAMPLES : n;  /* zeros after the clip */
  int32_t frames = 1 + samples / LSTMQ_HOP, t, m, j;
  if (frames > LSTMQ_MAX_FRAMES) return LSTMQ_ERROR_TOO_LONG;
  for (t = 0; t < frames; t++) log_mel_frame(pcm, n, samples, t, logmel[t]);
#if LSTMQ_NOISE_PERCENTILE >= 0
  subtract_noise(frames);
#endif
#if LSTMQ_FLOOR >= 0 || LSTMQ_SPEECH >= 0
  {
    int32_t peak = logmel[0][0];
    for (t = 0; t < frames; t++)
      for (m = 0; m < LSTMQ_N_MELS; m++) if (logmel[t][m] > peak) peak = logmel[t][m];
#if LSTMQ_FLOOR >= 0
    for (t = 0; t < frames; t++)
      for (m = 0; m < LSTMQ_N_MELS; m++)
        if (logmel[t][m] < peak - LSTMQ_FLOOR) logmel[t][m] = peak - LSTMQ_FLOOR;
#endif
#if LSTMQ_SPEECH >= 0
    for (t = 0; t < frames; t++) {  /* speech: the loudest band within LSTMQ_SPEECH of the peak */
      int32_t loudest = logmel[t][0];
      for (m = 1; m < LSTMQ_N_MELS; m++) if (logmel[t][m] > loudest) loudest = logmel[t][m];
      counted[t] = (uint8_t)(loudest >= peak - LSTMQ_SPEECH);
    }
#endif
  }
#endif
  for (t = 0; t < frames; t++) {
    for (j = 0; j < LSTMQ_N_MFCC; j++) {
      int32_t acc = 0;
      for (m = 0; m < LSTMQ_N_MELS; m++) acc += LSTMQ_DCT[j * LSTMQ_N_MELS + m] * logmel[t][m];
      values[t][j] = rsr(acc, LSTMQ_DCT_FRAC_BITS);
    }
  }
#if LSTMQ_UTTERANCE
  int32_t count = 0;
  for (t = 0; t < frames; t++) count += COUNTED(t);  /* at least the peak's frame */
  for (j = 0; j < LSTMQ_N_MFCC; j++) {
    int32_t sum = 0, deviation = 0, mean, mad;
    for (t = 0; t < frames; t++) if (COUNTED(t)) sum += values[t][j];
    mean = rounding_divide(sum, count);
    for (t = 0; t < frames; t++) {
      int32_t d = values[t][j] - mean;
      if (COUNTED(t)) deviation += d < 0 ? -d : d;
    }
    mad = rounding_divide(deviation, count);
    if (mad < 1) mad = 1;
    for (t = 0; t < frames; t++) {
      values[t][j] = rounding_divide((values[t][j] - mean) * (1 << LSTMQ_MAD_FRAC_BITS), mad);
    }
  }
#endif
  return frames;
}

static int32_t saturating_sub(int32_t a, int32_t b) {
  if (b > 0 && a < INT32_MIN + b) return INT32_MIN;
  if (b < 0 && a > INT32_MAX + b) return INT32_MAX;
  return a - b;
}

static int8_t quantize_value(int32_t v, int32_t j) {
  int32_t q = requantize(saturating_sub(v, LSTMQ_FEATURE_OFFSET[j]), LSTMQ_FEATURE_MULTIPLIER[j],
                         LSTMQ_FEATURE_SHIFT[j]);
  return (int8_t)clip32(q, -127, 127);
}

int32_t lstmq_features(const int16_t *pcm, int32_t n, int8_t *features) {
  int32_t frames, t, j;
  if (pcm == 0 || features == 0 || n < 0) return LSTMQ_ERROR_ARGUMENT;
  source_samples = n;
  frames = front_end(pcm, played_samples(n));
  if (frames < 0) return frames;
  if (LSTMQ_KEEP_FRAMES > 0 && frames > LSTMQ_KEEP_FRAMES) frames = LSTMQ_KEEP_FRAMES;
  for (t = 0; t < frames; t++)
    for (j = 0; j < LSTMQ_N_MFCC; j++) features[t * LSTMQ_N_MFCC + j] = quantize_value(values[t][j], j);
  return frames;
}

#endif /* LSTMQ_FRONTEND */

/* --- LSTM (lstmq/integer.py) ------------------------------------------------------------ */

#if LSTMQ_WEIGHT_BITS == 4
static int32_t signed_nibble(int32_t nibble) { return (nibble ^ 8) - 8; }  /* 8..15 -> -8..-1 */
#endif

static int32_t weight(const int8_t *w, int32_t index) {
#if LSTMQ_WEIGHT_BITS == 4  /* two per byte: element 2i in the low nibble, 2i+1 in the high */
  int32_t byte = (uint8_t)w[index >> 1];
  return signed_nibble((index & 1) ? (byte >> 4) : (byte & 15));
#else
  return w[index];
#endif
}

#if LSTMQ_FRONTEND
static int8_t features[LSTMQ_MAX_FRAMES * LSTMQ_N_MFCC];
#endif
static int16_t cell[LSTMQ_LAYERS][LSTMQ_HIDDEN];
static int8_t hidden[LSTMQ_LAYERS][LSTMQ_HIDDEN];
static int32_t mean_sum[LSTMQ_HIDDEN];

static void accumulate(int32_t *acc, const int8_t *w, const int8_t *x, int32_t rows) {
  int32_t i, j;  /* acc[j] += sum_i x[i] w[i][j], row by row: contiguous weights */
  for (i = 0; i < rows; i++) {
    int32_t xi = x[i];
    if (xi == 0) continue;
#if LSTMQ_WEIGHT_BITS == 4
    {  /* a row of 4 * hidden nibbles starts on a byte: two weights per byte, no branch */
      const uint8_t *row = (const uint8_t *)&w[i * (LSTMQ_GATES / 2)];
      for (j = 0; j < LSTMQ_GATES / 2; j++) {
        acc[2 * j] += xi * signed_nibble(row[j] & 15);
        acc[2 * j + 1] += xi * signed_nibble(row[j] >> 4);
      }
    }
#else
    {
      const int8_t *row = &w[i * LSTMQ_GATES];
      for (j = 0; j < LSTMQ_GATES; j++) acc[j] += xi * row[j];
    }
#endif
  }
}

static void lstm_step(int32_t layer, const int8_t *x, int32_t inputs) {
  const struct lstmq_layer *p = &LSTMQ_LAYER[layer];
  int32_t ax[LSTMQ_GATES], ah[LSTMQ_GATES];
  int16_t z[LSTMQ_GATES];
  int8_t new_h[LSTMQ_HIDDEN];
  int32_t j;
  for (j = 0; j < LSTMQ_GATES; j++) { ax[j] = p->input_bias[j]; ah[j] = 0; }
  accumulate(ax, p->input_kernel, x, inputs);
  accumulate(ah, p->recurrent_kernel, hidden[layer], LSTMQ_HIDDEN);
  for (j = 0; j < LSTMQ_GATES; j++) {
    int32_t zx = requantize(ax[j], p->input_multiplier[j], p->input_shift[j]);
    int32_t zh = requantize(ah[j], p->recurrent_multiplier[j], p->recurrent_shift[j]);
    z[j] = (int16_t)clip32(zx + zh, -32768, 32767);
  }
  for (j = 0; j < LSTMQ_HIDDEN; j++) {
    int32_t gi = lut(z[j], LSTMQ_SIGMOID_LUT), gf = lut(z[LSTMQ_HIDDEN + j], LSTMQ_SIGMOID_LUT);
    int32_t gg = lut(z[2 * LSTMQ_HIDDEN + j], LSTMQ_TANH_LUT);
    int32_t go = lut(z[3 * LSTMQ_HIDDEN + j], LSTMQ_SIGMOID_LUT);
    int32_t c = fixed_mul_shift(gf, cell[layer][j], 15) + fixed_mul_shift(gi, gg, 19);
    int32_t c_pre, tanh_c;
    c = clip32(c, -32768, 32767);
    c_pre = clip32(saturating_left_shift(c, 1), -32768, 32767);
    tanh_c = lut((int16_t)c_pre, LSTMQ_TANH_LUT);
    cell[layer][j] = (int16_t)c;
    new_h[j] = (int8_t)clip32(fixed_mul_shift(go, tanh_c, 23), -127, 127);
  }
  for (j = 0; j < LSTMQ_HIDDEN; j++) hidden[layer][j] = new_h[j];
}

int32_t lstmq_classify_features(const int8_t *x, int32_t frames, int32_t *logits) {
  int32_t t, layer, j, c, best = 0;
  int8_t summary[LSTMQ_HIDDEN];
  if (x == 0 || logits == 0 || frames < 0) return LSTMQ_ERROR_ARGUMENT;
  for (layer = 0; layer < LSTMQ_LAYERS; layer++) {
    for (j = 0; j < LSTMQ_HIDDEN; j++) { cell[layer][j] = 0; hidden[layer][j] = 0; }
  }
  for (j = 0; j < LSTMQ_HIDDEN; j++) mean_sum[j] = 0;
  for (t = 0; t < frames; t++) {
    lstm_step(0, &x[t * LSTMQ_N_MFCC], LSTMQ_N_MFCC);
    for (layer = 1; layer < LSTMQ_LAYERS; layer++) lstm_step(layer, hidden[layer - 1], LSTMQ_HIDDEN);
    for (j = 0; j < LSTMQ_HIDDEN; j++) mean_sum[j] += hidden[LSTMQ_LAYERS - 1][j];
  }
  for (j = 0; j < LSTMQ_HIDDEN; j++) {
#if LSTMQ_READOUT_MEAN
    summary[j] = (int8_t)clip32(rounding_divide(mean_sum[j], frames > 0 ? frames : 1), -127, 127);
#else
    summary[j] = hidden[LSTMQ_LAYERS - 1][j];
#endif
  }
  for (c = 0; c < LSTMQ_NUM_CLASSES; c++) {
    int32_t acc = LSTMQ_READOUT_BIAS[c];
    for (j = 0; j < LSTMQ_HIDDEN; j++) acc += summary[j] * weight(LSTMQ_READOUT_KERNEL, j * LSTMQ_NUM_CLASSES + c);
    logits[c] = acc;
    if (acc > logits[best]) best = c;
  }
  return best;
}

#if LSTMQ_FRONTEND
int32_t lstmq_classify(const int16_t *pcm, int32_t n, int32_t *logits) {
  int32_t frames;
  if (logits == 0) return LSTMQ_ERROR_ARGUMENT;
#if LSTMQ_VOTES > 0
  {  /* the logits of every pass added: speed 1, then each speed vote (int32: checked at export) */
    /* each pass scores into `pass_logits`: on an error the caller's buffer is left as it was */
    int32_t total[LSTMQ_NUM_CLASSES], pass_logits[LSTMQ_NUM_CLASSES], pass, c, best = 0;
    for (pass = 0; pass <= LSTMQ_VOTES; pass++) {
      pass_step = pass == 0 ? 1u << 16 : LSTMQ_VOTE_STEPS[pass - 1];
      frames = lstmq_features(pcm, n, features);
      if (frames < 0) { pass_step = 1u << 16; return frames; }
      lstmq_classify_features(features, frames, pass_logits);
      for (c = 0; c < LSTMQ_NUM_CLASSES; c++)
        total[c] = (pass == 0 ? 0 : total[c]) + pass_logits[c];
    }
    pass_step = 1u << 16;
    for (c = 0; c < LSTMQ_NUM_CLASSES; c++) {
      logits[c] = total[c];
      if (total[c] > total[best]) best = c;
    }
    return best;
  }
#else
  frames = lstmq_features(pcm, n, features);
  if (frames < 0) return frames;
  return lstmq_classify_features(features, frames, logits);
#endif
}
#endif
