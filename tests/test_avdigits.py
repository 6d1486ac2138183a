"""avdigits: real sklearn digits + eSpeak NG spoken digits, prepared for real (small configs)."""

from __future__ import annotations

import re
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
from sklearn.datasets import load_digits
from sklearn.linear_model import RidgeClassifier

from datasets import DatasetError, PreparedDataset, get_dataset_spec
from datasets.avdigits import DIGIT_WORDS, OPTIONS, SAMPLE_RATE, prepare

ID_RE = re.compile(r"^img(\d{4})_voice-(?P<voice>[^+_]+)(\+(?P<var>\w+))?_s(\d+)_p(\d+)$")
SMALL = {"max_images": 400, "n_configs": 40, "image_noise": 64.0, "seed": 3}  # noisy frames


def _prepare(root: Path, **options) -> PreparedDataset:
    prepare(root, None, options)
    return PreparedDataset.open(root)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> PreparedDataset:
    """Clean audio, two utterances per image."""
    root = tmp_path_factory.mktemp("avd") / "avdigits"
    return _prepare(root, **SMALL, audio_snr_db=None, pairs_per_image=2)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> PreparedDataset:
    """Same images and voices as `clean` but one pair per image and audio at -15 dB SNR."""
    root = tmp_path_factory.mktemp("avd") / "avdigits"
    return _prepare(root, **SMALL, audio_snr_db=-15.0, pairs_per_image=1)


@pytest.fixture(scope="module")
def clean_one_pair(tmp_path_factory) -> PreparedDataset:
    root = tmp_path_factory.mktemp("avd") / "avdigits"
    return _prepare(root, **SMALL, audio_snr_db=None, pairs_per_image=1)


def _parse(ids: list[str]) -> list[re.Match]:
    matches = [ID_RE.match(i) for i in ids]
    assert all(matches), [i for i, m in zip(ids, matches, strict=True) if not m][:3]
    return matches


def _image(m: re.Match) -> int:
    return int(m.group(1))


def _config(m: re.Match) -> str:
    return m.group(0).split("_voice-", 1)[1]


def test_registered_with_defaults_and_options() -> None:
    spec = get_dataset_spec("avdigits")
    assert spec.generated
    assert spec.defaults["encoder"] == "small" and spec.defaults["hflip"] is False
    assert spec.defaults["crop_size"] == 16
    for knob in ("audio_snr_db", "image_noise", "occlusion", "pairs_per_image", "feature", "seed"):
        assert knob in spec.options


def test_meta_shapes_dtypes_and_sizes(clean: PreparedDataset) -> None:
    n = SMALL["max_images"] * 2
    meta = clean.meta
    assert meta["classes"] == list(DIGIT_WORDS)
    assert meta["modalities"]["audio"]["shape"] == [1, 40, 64]
    assert meta["modalities"]["visual"]["shape"] == [2, 16, 16, 3]
    assert clean.arrays["audio"].shape == (n, 1, 40, 64)
    assert clean.arrays["audio"].dtype == np.float16
    assert clean.arrays["visual"].shape == (n, 2, 16, 16, 3)
    assert clean.arrays["visual"].dtype == np.uint8
    assert clean.labels.shape == (n,) and clean.labels.dtype == np.int64
    assert len(clean.ids) == n and len(set(clean.ids)) == n
    assert meta["options"]["pairs_per_image"] == 2 and meta["options"]["audio_snr_db"] is None
    assert meta["modalities"]["audio"]["preprocessing"]["sample_rate"] == SAMPLE_RATE
    assert "espeak" in meta["source"].lower() and "eSpeak NG" in meta["source"]
    assert set(meta["options"]) == set(OPTIONS)
    # splits: a partition of the rows, ~60/20/20 of the images, every class in every split
    sizes = {s: len(clean.splits[s]) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == n
    assert sizes == {"train": 480, "val": 160, "test": 160}
    allrows = np.concatenate(list(clean.splits.values()))
    assert len(np.unique(allrows)) == n
    for rows in clean.splits.values():
        assert set(clean.labels[rows]) == set(range(10))


def test_full_size_counts(clean_one_pair: PreparedDataset) -> None:
    # N = images * pairs_per_image (1797 * 1 without max_images; 400 here)
    assert len(clean_one_pair.labels) == SMALL["max_images"]


def test_images_and_voices_disjoint_across_splits(clean: PreparedDataset) -> None:
    parsed = _parse(clean.ids)
    images, configs, voices = {}, {}, {}
    for s, rows in clean.splits.items():
        images[s] = {_image(parsed[r]) for r in rows}
        configs[s] = {_config(parsed[r]) for r in rows}
        voices[s] = {parsed[r].group("voice") for r in rows}
        assert configs[s] <= set(clean.meta["voice_configs"][s])
        assert voices[s] <= set(clean.meta["base_voices"][s])
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not images[a] & images[b]
        assert not configs[a] & configs[b]
    # train voices are never heard at evaluation; val and test share one held-out pool
    assert not voices["train"] & (voices["val"] | voices["test"])
    assert clean.meta["base_voices"]["val"] == clean.meta["base_voices"]["test"]
    held = set(clean.meta["base_voices"]["val"])
    assert voices["val"] <= held and voices["test"] <= held
    assert len(voices["val"] | voices["test"]) > 1  # more than one unseen voice evaluated
    # each image's two utterances come from two different configurations
    by_image: dict[int, list[str]] = {}
    for m in parsed:
        by_image.setdefault(_image(m), []).append(_config(m))
    assert all(len(c) == 2 and c[0] != c[1] for c in by_image.values())


def test_labels_match_sklearn_digits(clean: PreparedDataset) -> None:
    digits = load_digits()
    img = np.array([_image(m) for m in _parse(clean.ids)])
    np.testing.assert_array_equal(clean.labels, digits.target[img])
    # the visual frames are that image (noise averages out over the 2 frames x 3 channels)
    vis = clean.arrays["visual"]
    assert (vis[..., 0] == vis[..., 1]).all() and (vis[..., 0] == vis[..., 2]).all()
    assert not (vis[:, 0] == vis[:, 1]).all()  # independent noise per frame
    small = vis[:, :, ::2, ::2, 0].astype(np.float32).mean(axis=1).reshape(len(img), -1)
    ref = digits.images[img].reshape(len(img), -1) * 255 / 16
    corr = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(small[:50], ref[:50], strict=True)])
    assert corr > 0.6


def _espeak_wave(config: str, word: str, tmp: Path) -> np.ndarray:
    voice, rate, pitch = re.match(r"^(.+)_s(\d+)_p(\d+)$", config).groups()
    path = tmp / "ref.wav"
    cmd = ["espeak-ng", "-v", voice, "-s", rate, "-p", pitch, "-w", str(path), word]
    subprocess.run(cmd, check=True, capture_output=True)
    with wave.open(str(path), "rb") as w:
        assert w.getframerate() == 22050
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2") / 32768.0
    return x.astype(np.float32)


def test_spectrogram_matches_independent_recomputation(
    clean: PreparedDataset, tmp_path: Path
) -> None:
    parsed = _parse(clean.ids)
    row = int(clean.splits["test"][7])
    x = _espeak_wave(_config(parsed[row]), DIGIT_WORDS[clean.labels[row]], tmp_path)
    loud = np.flatnonzero(np.abs(x) > 0.01 * np.abs(x).max())
    x = x[loud[0] : loud[-1] + 1]
    window = np.zeros(22050, dtype=np.float32)
    if len(x) >= 22050:
        window[:] = x[(len(x) - 22050) // 2 :][:22050]
    else:
        window[(22050 - len(x)) // 2 :][: len(x)] = x
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=22050, n_fft=512, hop_length=22050 // 63, n_mels=40, power=2.0
    )(torch.from_numpy(window))
    ref = torch.log(mel + 1e-6).numpy()
    got = np.asarray(clean.arrays["audio"][row, 0], dtype=np.float32)
    assert got.shape == ref.shape == (40, 64)
    np.testing.assert_allclose(got, ref, atol=0.02, rtol=2e-3)


def _audio_acc(ds: PreparedDataset) -> float:
    x = np.asarray(ds.arrays["audio"], dtype=np.float32).reshape(len(ds.labels), -1)
    tr, te = ds.splits["train"], ds.splits["test"]
    clf = RidgeClassifier(alpha=100.0).fit(x[tr], ds.labels[tr])  # linear, closed form
    return float(clf.score(x[te], ds.labels[te]))


def test_snr_knob_lowers_audio_accuracy(
    clean_one_pair: PreparedDataset, noisy: PreparedDataset
) -> None:
    assert clean_one_pair.ids == noisy.ids  # same images, same voices
    np.testing.assert_array_equal(clean_one_pair.arrays["visual"], noisy.arrays["visual"])
    a = np.asarray(clean_one_pair.arrays["audio"], dtype=np.float32)
    b = np.asarray(noisy.arrays["audio"], dtype=np.float32)
    assert np.abs(a - b).mean() > 1.0
    acc_clean, acc_noisy = _audio_acc(clean_one_pair), _audio_acc(noisy)
    print(f"linear audio accuracy: clean {acc_clean:.3f}, -15 dB {acc_noisy:.3f}")
    assert acc_clean > 0.7
    assert acc_noisy < acc_clean - 0.15


def test_stft_feature_and_occlusion(tmp_path: Path) -> None:
    ds = _prepare(
        tmp_path / "avd",
        max_images=100,
        n_configs=10,
        feature="stft",
        occlusion=0.5,
        image_noise=0.0,
        frames=3,
    )
    assert ds.arrays["audio"].shape == (100, 1, 257, 64)
    assert ds.meta["modalities"]["audio"]["preprocessing"]["feature"] == "stft"
    vis = ds.arrays["visual"][..., 0]
    assert vis.shape == (100, 3, 16, 16)
    # an 8x8 mid-gray square in every frame
    assert ((vis == 128).sum(axis=(2, 3)) >= 64).all()


def test_only_the_utterances_rows_hear_are_synthesised(tmp_path: Path, monkeypatch) -> None:
    """n_configs sizes the pool of voices, not the number of espeak-ng calls: each
    (configuration, digit) that some row hears is synthesised once, and no other."""
    import datasets.avdigits as avd

    calls: list[tuple[str, str]] = []
    real = avd.synthesise

    def counting(exe, config, word, wav_path):
        calls.append((avd.config_name(*config), word))
        return real(exe, config, word, wav_path)

    monkeypatch.setattr(avd, "synthesise", counting)
    ds = _prepare(tmp_path / "avd", max_images=100, n_configs=100, seed=1)
    heard = {(_config(m), DIGIT_WORDS[y]) for m, y in zip(_parse(ds.ids), ds.labels, strict=True)}
    assert len(calls) == len(set(calls)) == len(heard)
    assert set(calls) == heard
    assert len(calls) < 100 * 10  # the old scheme made every configuration say every digit


def test_missing_espeak_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DatasetError) as exc:
        prepare(tmp_path / "avd", None, {})
    msg = str(exc.value)
    assert "\n" not in msg
    assert "espeak-ng is not installed" in msg
    assert "apt-get install espeak-ng" in msg and "make install" in msg
    assert not (tmp_path / "avd" / "meta.json").exists()


def test_unknown_option_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown option"):
        prepare(tmp_path / "avd", None, {"snr": 0})
