"""Decoding WAV bytes into mono float32 clips, with the audio policy of every loader.

Policy: integer PCM becomes float32 in [-1, 1) (int16 / 32768, as libsndfile reads it);
multi-channel files are mixed down to mono by averaging the channels (as ``librosa.load``
does); a clip at another sample rate is resampled only when asked, otherwise refused
naming the file and both rates. Empty, too short, truncated, non-finite or non-WAV audio
is refused naming the file.
"""

from __future__ import annotations

import io
import re
import struct

import numpy as np
import soundfile

MIN_SECONDS = 0.05  # shorter clips are refused: too few frames to classify
WAV_FORMATS = ("WAV", "WAVEX", "RF64", "W64")  # soundfile's names for RIFF-family files


class AudioError(ValueError):
    """A clip cannot be decoded or does not meet the audio policy; names the file."""


def riff_data_shortfall(data: bytes) -> int:
    """Bytes of audio a RIFF/WAVE header declares beyond the end of the file (0: complete).

    libsndfile reads a truncated file's remaining samples without a word, so the ``data``
    chunk's declared size is compared with what the file holds.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0
    offset = 12
    while offset + 8 <= len(data):
        chunk, size = data[offset:offset + 4], struct.unpack("<I", data[offset + 4:offset + 8])[0]
        if chunk == b"data":
            if size == 0xFFFFFFFF:  # streamed WAV: size unknown, nothing to compare
                return 0
            return max(0, size - (len(data) - offset - 8))
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    return 0


def decode_wav(data: bytes, where: str) -> tuple[np.ndarray, int]:
    """(<float32>[samples, channels] audio, sample rate) of WAV bytes.

    Raises:
      AudioError: naming ``where``: not a WAV, unreadable, or truncated.
    """
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as file:
            kind, rate = file.format, file.samplerate
            audio = file.read(dtype="float32", always_2d=True)
    except (RuntimeError, ValueError, TypeError, EOFError, soundfile.LibsndfileError) as error:
        reason = re.sub(r"Error opening <_io\.BytesIO object at 0x[0-9a-f]+>: ?", "",
                        str(error)).strip()
        raise AudioError(f"{where}: not a readable WAV file ({reason})") from None
    if kind not in WAV_FORMATS:
        raise AudioError(f"{where}: {kind} audio, not a WAV file")
    missing = riff_data_shortfall(data)
    if missing:
        raise AudioError(f"{where}: truncated WAV file (its header declares {missing:,} more "
                         "bytes of audio than the file holds)")
    return audio, int(rate)


def conform(audio: np.ndarray, rate: int, sample_rate: int, resample: bool,
            where: str) -> np.ndarray:
    """Check length and values, mix down to mono, match ``sample_rate``: <float32>[samples].

    Raises:
      AudioError: naming ``where`` and the problem.
    """
    audio = np.asarray(audio, np.float32)
    if audio.shape[0] == 0:
        raise AudioError(f"{where}: empty audio (no samples)")
    if audio.shape[0] < MIN_SECONDS * rate:
        seconds = audio.shape[0] / rate
        raise AudioError(f"{where}: too short ({audio.shape[0]} samples = {seconds:.3f} s "
                         f"< {MIN_SECONDS} s)")
    if not np.isfinite(audio).all():
        raise AudioError(f"{where}: audio holds NaN or infinite samples")
    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    if rate != sample_rate:
        if not resample:
            raise AudioError(f"{where}: sample rate {rate} Hz, expected {sample_rate} Hz "
                             "(resample it: data.resample=true, or --resample of lstmq eval "
                             "--data and lstmq predict)")
        import librosa  # pylint: disable=import-outside-toplevel

        mono = librosa.resample(mono, orig_sr=rate, target_sr=sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)
