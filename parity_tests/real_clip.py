"""The real multitrack clip shipped by ``stempeg`` and the oracle Wiener separation of it (main environment).

``stempeg.example_stem_path()`` is a 44.1 kHz stereo stem file: mixture, drums, bass, other, vocals (about 6 s).
Its mixture stream is mastered, so the linear mixture used here is the sum of the four stems.

Oracle separation: the true source magnitudes take the place of the networks' outputs, the mixture STFT goes
through the Wiener filter (niter 1) and the inverse STFT. Run twice: by the NumPy reference
(``core_spec.reference.separator.filter_and_invert``) and by the upstream code (``openunmix.filtering.wiener`` and
``openunmix.transforms``), both scored with museval against the true stems.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core_spec.configs import SeparatorConfig, umx_preset
from core_spec.reference.separator import filter_and_invert
from core_spec.reference.transforms import complex_norm, stft
from unmix.parity.clip import STEM_NAMES


@dataclass(frozen=True)
class Clip:
    mixture: np.ndarray  # (nb_channels, nb_timesteps), the sum of the stems
    stems: dict[str, np.ndarray]  # name -> (nb_channels, nb_timesteps)
    rate: int


def load_clip() -> Clip:
    """Read the stempeg example (``unmix.parity.clip``: needs ffmpeg, or ``$UNMIX_STEMPEG_CLIP``); float64
    ``(channels, time)`` arrays.

    Raises:
        RuntimeError: the clip cannot be decoded (no ffmpeg on PATH: ``make setup`` provides one).
    """
    from unmix.parity.clip import read_example_stems

    stems, rate = read_example_stems()  # a clear error without ffmpeg
    mixture = np.sum([stems[n] for n in STEM_NAMES], axis=0)
    return Clip(mixture=mixture, stems=stems, rate=rate)


def oracle_config(niter: int = 1) -> SeparatorConfig:
    """The umxhq separator settings with the clip's targets, ``niter`` EM iterations."""
    import dataclasses

    sep = umx_preset("umxhq").separator
    return dataclasses.replace(sep, targets=STEM_NAMES, wiener=dataclasses.replace(sep.wiener, niter=niter))


def oracle_reference(clip: Clip, sep: SeparatorConfig) -> np.ndarray:
    """Oracle separation by the NumPy reference: ``(nb_sources, nb_channels, nb_timesteps)``."""
    fft = sep.stft
    mix_stft = stft(clip.mixture[None], fft.n_fft, fft.n_hop)  # (1, C, F, T)
    spectrograms = np.stack([complex_norm(stft(clip.stems[n][None], fft.n_fft, fft.n_hop)) for n in STEM_NAMES], -1)
    return filter_and_invert(mix_stft, spectrograms, sep, clip.mixture.shape[-1])[0]


def oracle_upstream(clip: Clip, sep: SeparatorConfig) -> np.ndarray:
    """The same separation by upstream openunmix (its STFT, ComplexNorm, wiener, ISTFT), float64."""
    from parity_tests.oracle import torch  # noqa: I001  (inserts the torchaudio stub before openunmix is imported)
    from openunmix.filtering import wiener
    from openunmix.transforms import ComplexNorm, make_filterbanks

    fft = sep.stft
    encoder, decoder = make_filterbanks(n_fft=fft.n_fft, n_hop=fft.n_hop, center=True)
    encoder, decoder = encoder.double(), decoder.double()
    norm = ComplexNorm(mono=False)
    with torch.no_grad():
        mix_stft = encoder(torch.from_numpy(clip.mixture[None]))  # (1, C, F, T, 2)
        spectrograms = torch.stack([norm(encoder(torch.from_numpy(clip.stems[n][None]))) for n in STEM_NAMES], -1)
        spectrograms = spectrograms.permute(0, 3, 2, 1, 4)[0]  # (T, F, C, S)
        mix = mix_stft.permute(0, 3, 2, 1, 4)[0]  # (T, F, C, 2)
        nb_frames = mix.shape[0]
        win = sep.wiener.wiener_win_len or nb_frames
        out = torch.zeros(mix.shape + (len(STEM_NAMES),), dtype=torch.float64)
        for pos in range(0, nb_frames, win):
            t = torch.arange(pos, min(nb_frames, pos + win))
            out[t] = wiener(spectrograms[t], mix[t], sep.wiener.niter, softmask=sep.wiener.softmask)
        out = out.permute(4, 2, 1, 0, 3).contiguous()  # (S, C, F, T, 2)
        return decoder(out, length=clip.mixture.shape[-1]).numpy()


def sdr_per_source(clip: Clip, estimates: np.ndarray) -> dict[str, float]:
    """museval (BSSEval v4) SDR per source, median over 1 s windows."""
    import museval

    references = np.stack([clip.stems[n].T for n in STEM_NAMES])  # (S, time, channels)
    sdr, _, _, _ = museval.evaluate(references, estimates.transpose(0, 2, 1), win=clip.rate, hop=clip.rate)
    return {n: float(np.nanmedian(sdr[i])) for i, n in enumerate(STEM_NAMES)}
