"""Tests for kdhelpers.data: fetching the VADER corpora safely and splitting them."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from kdhelpers import data as kd_data
from kdhelpers import fetch as kd_fetch
from kdhelpers import paths
from kdhelpers.data import DEFAULT_SPLIT_SIZES, VADER_DOMAINS, load_sentiment, load_vader_corpus
from kdhelpers.fetch import (
    ChecksumMismatchError,
    DataFetchError,
    HubUnavailableError,
    fetch_vader_corpora,
    vader_is_fetched,
)

REPO = Path(__file__).resolve().parent.parent
RAW_ROWS = {"movies": 10605, "tweets": 4200, "amazon": 3708, "nyt": 5190}
NEUTRAL_ROWS = {"movies": 37, "tweets": 4, "amazon": 98, "nyt": 244}
# 199 tweets rated by 92-99 people have a ground-truth mean that differs from the mean of the
# ratings published for them (by up to 1.13 points, never in sign); everywhere else they agree.
TWEETS_MEAN_MISMATCHES = 199


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def vader_sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The vaderSentiment 3.3.2 sdist, downloaded once (or env KD_VADER_SDIST for offline runs)."""
    local = os.environ.get("KD_VADER_SDIST")
    if local:
        return Path(local)
    try:
        return kd_fetch._pip_download(tmp_path_factory.mktemp("sdist"), timeout_s=180)
    except DataFetchError as exc:
        pytest.skip(f"pip cannot download the vaderSentiment sdist (offline?): {str(exc)[:200]}")


@pytest.fixture(scope="session")
def vader_root(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A data folder with verified corpora: the user's own when fetched, else a fresh fetch."""
    if vader_is_fetched(paths.data_dir()):
        return paths.data_dir()
    sdist = request.getfixturevalue("vader_sdist")
    root = tmp_path_factory.mktemp("data")
    fetch_vader_corpora(root, sdist_path=sdist)
    return root


@pytest.fixture(scope="session")
def movies(vader_root: Path):
    """Default movies splits for seed 0."""
    return load_sentiment("movies", seed=0, data_dir=vader_root)


def split_ids(dsd) -> dict[str, list[str]]:
    """Ids per split."""
    return {name: list(split["id"]) for name, split in dsd.items()}


def leftovers(root: Path) -> list[str]:
    """Staging or old folders an interrupted fetch might leave behind."""
    return sorted(
        p.name for p in root.iterdir() if p.name.startswith((".vader-staging-", ".vader-old-"))
    )


# ----------------------------------------------------------------------------- content


@pytest.mark.parametrize("domain", VADER_DOMAINS)
def test_raw_rows_per_domain(vader_root: Path, domain: str) -> None:
    corpus = load_vader_corpus(domain, data_dir=vader_root)
    assert len(corpus) == RAW_ROWS[domain]
    ids = corpus["id"]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(rf"{domain}:\d+(_\d+)?", i) for i in ids)  # no BOM, no stray spaces
    assert all(text and text == text.strip() for text in corpus["text"])
    scores = corpus["score"]
    assert min(scores) >= -4 and max(scores) <= 4
    assert sum(s == 0 for s in scores) == NEUTRAL_ROWS[domain]


def test_stable_ids_point_at_source_rows(vader_root: Path) -> None:
    movies = load_vader_corpus("movies", data_dir=vader_root)
    assert movies[0]["id"] == "movies:1"
    assert movies[0]["text"].startswith("The Rock is destined to be the 21st Century's new")
    assert movies[0]["score"] == pytest.approx(2.26666666667)
    amazon = load_vader_corpus("amazon", data_dir=vader_root)  # its ratings file has a BOM
    assert amazon[0]["id"] == "amazon:1_1"
    assert amazon[0]["rater_scores"][:5] == [0, -1, 0, 0, -1]


def test_non_ascii_text_decoded(vader_root: Path) -> None:
    texts = load_vader_corpus("movies", data_dir=vader_root)["text"]
    assert sum("é" in t for t in texts) > 10
    assert not any("Ã" in t or "\ufffd" in t for t in texts)  # no mojibake, no replacements


def test_parser_survives_bom_crlf_and_legacy_encodings(tmp_path: Path) -> None:
    truth = tmp_path / "x_GroundTruth.txt"
    truth.write_bytes(
        b"\xef\xbb\xbf1\t1.5\tcaf\xc3\xa9 ok\r\n"  # BOM + UTF-8
        b"2\t-2\tcaf\xe9 latin\r\n"  # Latin-1 byte
        b"3\t0.25\t\x93quoted\x94 and \x85 ellipsis\r"  # Windows-1252, old Mac line end
        b"\r\n"
        b"4\t-0.5\t tab\tinside \n"
    )
    rows = kd_data._read_ground_truth(truth)
    assert rows == [
        ("1", 1.5, "café ok"),
        ("2", -2.0, "café latin"),
        ("3", 0.25, "\u201cquoted\u201d and \u2026 ellipsis"),
        ("4", -0.5, "tab\tinside"),
    ]
    ratings = tmp_path / "x_anonDataRatings.txt"
    ratings.write_bytes(b"\xef\xbb\xbf1\t1.5\t0.5\t[1, 2]\r\n2\t-2\t0\t[-2,-2]\r\n")
    assert kd_data._read_ratings(ratings) == {"1": [1, 2], "2": [-2, -2]}
    ratings.write_bytes(b"1\t1.5\t0.5\t[1, 9]\n")
    with pytest.raises(ValueError, match="integers in"):
        kd_data._read_ratings(ratings)


@pytest.mark.parametrize("domain", VADER_DOMAINS)
def test_labels_follow_score_sign_and_rater_means(vader_root: Path, domain: str) -> None:
    splits = load_sentiment(domain, data_dir=vader_root)
    total = sum(len(split) for split in splits.values())
    assert total == RAW_ROWS[domain] - NEUTRAL_ROWS[domain]
    mismatches = 0
    for split in splits.values():
        for label, score, raters in zip(
            split["label"], split["score"], split["rater_scores"], strict=True
        ):
            assert score != 0 and label == int(score > 0)
            assert len(raters) >= 10 and all(-4 <= r <= 4 for r in raters)
            rater_mean = sum(raters) / len(raters)
            if abs(rater_mean - score) > 1e-6:
                mismatches += 1
                assert (rater_mean > 0) == (score > 0) and abs(rater_mean - score) < 1.2
                assert len(raters) >= 90
    assert mismatches == (TWEETS_MEAN_MISMATCHES if domain == "tweets" else 0)


# ----------------------------------------------------------------------------- splits


@pytest.mark.parametrize("domain", VADER_DOMAINS)
def test_default_splits_disjoint_and_complete(vader_root: Path, domain: str) -> None:
    splits = load_sentiment(domain, data_dir=vader_root)
    assert list(splits) == ["train", "unlabeled", "validation", "test"]
    assert list(splits["train"].features) == ["id", "text", "label", "score", "rater_scores"]
    ids = split_ids(splits)
    sizes = DEFAULT_SPLIT_SIZES[domain]
    assert (len(ids["train"]), len(ids["validation"]), len(ids["test"])) == tuple(sizes)
    everything = [i for split in ids.values() for i in split]
    assert len(set(everything)) == len(everything) == RAW_ROWS[domain] - NEUTRAL_ROWS[domain]
    labels = splits["train"]["label"]
    assert 0 < sum(labels) < len(labels)  # both classes present


def test_duplicate_texts_stay_in_one_split(vader_root: Path) -> None:
    splits = load_sentiment("nyt", data_dir=vader_root)  # 71 texts occur twice in nyt
    where: dict[str, set[str]] = {}
    for name, split in splits.items():
        for text in split["text"]:
            where.setdefault(" ".join(text.casefold().split()), set()).add(name)
    assert all(len(names) == 1 for names in where.values())


def test_splits_deterministic_per_seed(vader_root: Path, movies) -> None:
    again = split_ids(load_sentiment("movies", seed=0, data_dir=vader_root))
    assert again == split_ids(movies)
    other = split_ids(load_sentiment("movies", seed=1, data_dir=vader_root))
    assert other["train"] != again["train"]
    assert set(other["train"]) | set(other["unlabeled"]) == set(again["train"]) | set(
        again["unlabeled"]
    )
    # held-out splits do not depend on the seed, so runs with different seeds share a test set
    assert other["test"] == again["test"] and other["validation"] == again["validation"]


def test_test_split_unchanged_across_n_train(vader_root: Path, movies) -> None:
    base = split_ids(movies)
    small = split_ids(load_sentiment("movies", n_train=100, data_dir=vader_root))
    large = split_ids(load_sentiment("movies", n_train=5000, data_dir=vader_root))
    for ids in (small, large):
        assert ids["test"] == base["test"] and ids["validation"] == base["validation"]
    assert len(small["train"]) == 100 and len(large["train"]) == 5000
    assert set(small["train"]) < set(base["train"]) < set(large["train"])  # nested


def test_size_overrides_and_whole_pool(vader_root: Path) -> None:
    pool = RAW_ROWS["tweets"] - NEUTRAL_ROWS["tweets"] - 100 - 50
    splits = load_sentiment(
        "tweets", n_train=pool, n_validation=50, n_test=100, data_dir=vader_root
    )
    assert [len(s) for s in splits.values()] == [pool, 0, 50, 100]


def test_bad_domain_and_sizes_raise(vader_root: Path) -> None:
    with pytest.raises(ValueError, match="movies.*tweets.*amazon.*nyt"):
        load_sentiment("imdb", data_dir=vader_root)
    with pytest.raises(ValueError, match=r"10000.*10568"):
        load_sentiment("movies", n_train=10000, data_dir=vader_root)
    with pytest.raises(ValueError, match="n_test"):
        load_sentiment("movies", n_test=-1, data_dir=vader_root)
    with pytest.raises(ValueError, match="n_train"):
        load_sentiment("movies", n_train=0.5, data_dir=vader_root)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        load_sentiment("movies", seed=-3, data_dir=vader_root)


# ----------------------------------------------------------------------------- fetching


def test_checksum_mismatch_raises(tmp_path: Path) -> None:
    fake = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    fake.write_bytes(b"not the release" * 100)
    with pytest.raises(ChecksumMismatchError, match=kd_fetch.VADER_SDIST_SHA256) as info:
        fetch_vader_corpora(tmp_path / "data", sdist_path=fake)
    assert isinstance(info.value, DataFetchError) and isinstance(info.value, RuntimeError)
    assert not (tmp_path / "data" / "vader").exists()
    assert leftovers(tmp_path / "data") == []


def test_offline_pip_failure_explains_what_to_do(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # ignore configured mirrors / find-links
    with socket.socket() as sock:  # a local port with nothing listening: refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DataFetchError, match="--sdist") as info:
        fetch_vader_corpora(tmp_path / "data")
    assert "PyPI" in str(info.value)
    assert not (tmp_path / "data" / "vader").exists()


def test_fetch_is_noop_when_verified(tmp_path: Path, vader_sdist: Path, monkeypatch) -> None:
    target = fetch_vader_corpora(tmp_path, sdist_path=vader_sdist)
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["sdist_sha256"] == kd_fetch.VADER_SDIST_SHA256
    assert {n: e["sha256"] for n, e in manifest["files"].items()} == dict(kd_fetch.VADER_FILES)
    stamp = (target / "manifest.json").stat().st_mtime_ns

    def forbidden(*args, **kwargs):
        raise AssertionError("a verified folder must not be fetched again")

    monkeypatch.setattr(kd_fetch, "_pip_download", forbidden)
    monkeypatch.setattr(kd_fetch, "_extract_corpora", forbidden)
    assert fetch_vader_corpora(tmp_path) == target
    assert (target / "manifest.json").stat().st_mtime_ns == stamp


def test_interrupted_extraction_leaves_nothing_trusted(
    tmp_path: Path, vader_sdist: Path, monkeypatch
) -> None:
    real_write = kd_fetch._write_file
    calls = []

    def crash_on_third(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == 3:
            real_write(path, data[: len(data) // 2])  # a half-written file ...
            raise KeyboardInterrupt("simulated interruption")  # ... then the run dies
        real_write(path, data)

    monkeypatch.setattr(kd_fetch, "_write_file", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        fetch_vader_corpora(tmp_path, sdist_path=vader_sdist)
    assert not (tmp_path / "vader").exists()
    assert leftovers(tmp_path) == []
    assert not vader_is_fetched(tmp_path)
    monkeypatch.setattr(kd_fetch, "_write_file", real_write)
    fetch_vader_corpora(tmp_path, sdist_path=vader_sdist)
    assert vader_is_fetched(tmp_path)


def test_killed_fetch_debris_is_not_trusted(tmp_path: Path, vader_sdist: Path) -> None:
    # what a SIGKILL mid-fetch could leave: a staging folder and a target without a manifest
    staging = tmp_path / ".vader-staging-dead"
    staging.mkdir()
    (staging / "tweets_GroundTruth.txt").write_text("1\t2.0\thalf")
    target = tmp_path / "vader"
    target.mkdir()
    (target / "tweets_GroundTruth.txt").write_text("1\t2.0\thalf")
    assert not vader_is_fetched(tmp_path)
    fetch_vader_corpora(tmp_path, sdist_path=vader_sdist)
    assert vader_is_fetched(tmp_path)
    assert leftovers(tmp_path) == []
    assert len(load_vader_corpus("tweets", data_dir=tmp_path)) == RAW_ROWS["tweets"]


@pytest.mark.parametrize("damage", ["truncate", "delete", "manifest"])
def test_corrupted_files_trigger_refetch(
    tmp_path: Path, vader_sdist: Path, damage: str, monkeypatch
) -> None:
    target = fetch_vader_corpora(tmp_path, sdist_path=vader_sdist)
    victim = target / "tweets_anonDataRatings.txt"
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:1000])
    elif damage == "delete":
        victim.unlink()
    else:
        (target / "manifest.json").write_text("{not json")
    assert not vader_is_fetched(tmp_path)
    # a default fetch would use pip; hand it the local sdist instead to stay fast and offline
    monkeypatch.setattr(kd_fetch, "_pip_download", lambda dest, timeout_s=600.0: vader_sdist)
    assert len(load_vader_corpus("tweets", data_dir=tmp_path)) == RAW_ROWS["tweets"]
    assert vader_is_fetched(tmp_path)
    assert kd_fetch._sha256_file(victim) == kd_fetch.VADER_FILES[victim.name]


def test_concurrent_fetches_end_in_a_correct_manifest(tmp_path: Path, vader_sdist: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    workers = [
        ctx.Process(target=fetch_vader_corpora, args=(tmp_path, vader_sdist)) for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert vader_is_fetched(tmp_path)
    assert leftovers(tmp_path) == []
    manifest = json.loads((tmp_path / "vader" / "manifest.json").read_text())
    assert set(manifest["files"]) == set(kd_fetch.VADER_FILES)


def test_sha256_recorded_in_readme() -> None:
    readme = (REPO / "data" / "README.md").read_text(encoding="utf-8")
    assert kd_fetch.VADER_SDIST_SHA256 in readme
    assert kd_fetch.VADER_INNER_SHA256 in readme
    assert "pypi.org" not in readme.lower() and "pythonhosted" not in readme.lower()


def test_command_line_fetch_and_info(tmp_path: Path, vader_sdist: Path) -> None:
    env = {**os.environ, "KD_DATA_DIR": str(tmp_path)}
    fetch = subprocess.run(
        [sys.executable, "-m", "kdhelpers.data", "fetch", "--sdist", str(vader_sdist)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert fetch.returncode == 0, fetch.stderr
    assert fetch.stdout.strip() == str(tmp_path / "vader")
    info = subprocess.run(
        [sys.executable, "-m", "kdhelpers.data", "info"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert info.returncode == 0, info.stderr
    for domain, rows in RAW_ROWS.items():
        assert re.search(rf"{domain}\s+{rows}\s+{NEUTRAL_ROWS[domain]}\s", info.stdout)


# ----------------------------------------------------------------------------- Hub data sets


@pytest.mark.parametrize("domain", ["rotten_tomatoes", "sst2"])
def test_hub_dataset_offline_env_fails_fast(domain: str, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match=r"load_sentiment\('movies'\)"):
        load_sentiment(domain)
    assert time.perf_counter() - start < 5


def test_hub_unreachable_fails_fast(monkeypatch) -> None:
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match="movies"):
        load_sentiment("rotten_tomatoes")
    assert time.perf_counter() - start < 5


def test_hub_probe_that_hangs_is_cut_short(monkeypatch) -> None:
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hub.invalid")
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)  # a DNS look-up or connection that never returns
        raise OSError("gave up")

    monkeypatch.setattr(
        urllib.request, "urlopen", hang
    )  # the probe in kdhelpers.setup_checks uses it
    start = time.perf_counter()
    try:
        with pytest.raises(HubUnavailableError, match="movies"):
            load_sentiment("sst2")
        assert time.perf_counter() - start < 5
    finally:
        release.set()


@pytest.mark.parametrize("domain", ["rotten_tomatoes", "sst2"])
def test_hub_dataset_layout(domain: str, monkeypatch) -> None:
    import datasets

    def fake_split(n: int, prefix: str, text_column: str) -> datasets.Dataset:
        texts = [f"{prefix} text {i}" for i in range(n)]
        return datasets.Dataset.from_dict({text_column: texts, "label": [i % 2 for i in range(n)]})

    column = "sentence" if domain == "sst2" else "text"
    fake = datasets.DatasetDict(
        {
            "train": fake_split(300, "train", column),
            "validation": fake_split(40, "val", column),
            "test": fake_split(50, "test", column),
        }
    )
    monkeypatch.setattr(kd_data, "_hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: fake)
    kwargs = {"n_validation": 30} if domain == "sst2" else {}
    splits = load_sentiment(domain, seed=3, n_train=100, **kwargs)
    assert list(splits) == ["train", "unlabeled", "validation", "test"]
    sizes = [len(s) for s in splits.values()]
    assert sizes == ([100, 170, 30, 40] if domain == "sst2" else [100, 200, 40, 50])
    assert splits["train"][0]["score"] is None and splits["train"][0]["rater_scores"] == []
    ids = [i for s in splits.values() for i in s["id"]]
    assert len(set(ids)) == len(ids) and ids[0].startswith(f"{domain}:train:")
    if domain == "rotten_tomatoes":
        with pytest.raises(ValueError, match="fixed at 50"):
            load_sentiment(domain, n_test=10)


def test_splits_come_shuffled_so_their_heads_are_fair_samples() -> None:
    ds = load_sentiment("movies", seed=0)
    for name, split in ds.items():
        head = split.select(range(100))["label"]
        assert 0.3 < sum(head) / 100 < 0.7, f"the first 100 rows of {name} are not a fair sample"
        ids = [int(i.split(":")[1]) for i in split["id"][:50]]
        assert ids != sorted(ids), f"{name} comes in source order"


# ----------------------------------------------------------------------------- fetch safety


def _look_alike_sdist(folder: Path, marker: Path) -> Path:
    """A fake vaderSentiment-3.3.2.tar.gz whose in-tree build backend writes `marker` when run."""
    import io
    import tarfile

    backend = f"open({str(marker)!r}, 'a').write('ran')\ndef get_requires_for_build_wheel(c=None):\n    return []\n"
    files = {
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "evil"\nbackend-path = ["."]\n',
        "evil.py": backend,
        "setup.py": backend,
        "PKG-INFO": "Metadata-Version: 2.1\nName: vaderSentiment\nVersion: 3.3.2\n",
    }
    folder.mkdir(parents=True, exist_ok=True)
    sdist = folder / kd_fetch.VADER_SDIST_NAME
    with tarfile.open(sdist, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"vaderSentiment-3.3.2/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return sdist


def _offline_index(monkeypatch, find_links: Path) -> None:
    """pip sees only `find_links` (no index, no config, no cache)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(find_links))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
        monkeypatch.delenv(var, raising=False)


def test_a_look_alike_sdist_is_refused_before_any_of_its_code_runs(
    tmp_path: Path, monkeypatch
) -> None:
    marker = tmp_path / "code-ran.txt"
    _look_alike_sdist(tmp_path / "index", marker)
    _offline_index(monkeypatch, tmp_path / "index")
    with pytest.raises(ChecksumMismatchError, match=kd_fetch.VADER_SDIST_SHA256) as info:
        fetch_vader_corpora(tmp_path / "data")
    assert "nothing from it was run" in str(info.value)
    assert not marker.exists(), "pip ran the archive's build code before checking its hash"
    assert not (tmp_path / "data" / "vader").exists()


def test_pip_runs_in_hash_checking_mode(tmp_path: Path) -> None:
    req = tmp_path / "r.txt"
    cmd = kd_fetch._pip_command(tmp_path, req)
    assert {"--no-deps", "--require-hashes"} <= set(cmd)
    assert cmd[cmd.index("--requirement") + 1] == str(req)
    assert kd_fetch.VADER_REQUIREMENT not in cmd  # the pinned line with its hash lives in the file


def _gone(pid: int) -> bool:
    """True when `pid` no longer runs (absent, or a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


#: Stands in for pip: starts a helper (as pip starts build backends), writes both pids, waits.
_SLEEPER = (
    "import os, subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "open(sys.argv[1], 'w').write('%d %d' % (os.getpid(), child.pid))\n"
    "time.sleep(120)\n"
)


def _wait_for_pids(path: Path, limit_s: float = 30) -> list[int]:
    """The pids a sleeper wrote to `path`."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().split()) == 2:
            return [int(p) for p in path.read_text().split()]
        time.sleep(0.05)
    raise AssertionError("the sleeper did not start")


@pytest.mark.skipif(sys.platform != "linux", reason="checks /proc")
def test_interrupted_download_kills_pip_and_its_helpers(tmp_path: Path, monkeypatch) -> None:
    import _thread

    pid_file = tmp_path / "pids"
    sleeper = [sys.executable, "-c", _SLEEPER, str(pid_file)]
    monkeypatch.setattr(kd_fetch, "_pip_command", lambda dest, req: sleeper)

    def interrupt() -> None:
        _wait_for_pids(pid_file)
        _thread.interrupt_main()

    # a shell that starts pytest in the background (`cmd &`) leaves SIGINT ignored, and then
    # interrupt_main() does nothing: give SIGINT Python's own handler for this test
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            kd_fetch._pip_download(tmp_path, timeout_s=60)
    finally:
        signal.signal(signal.SIGINT, previous)
    pids = _wait_for_pids(pid_file)
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(p) for p in pids), f"left running: {pids}"


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG and /proc")
def test_pip_dies_with_a_killed_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    code = _SLEEPER
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys\nfrom kdhelpers import fetch as data\n"
                f"data._run_killable([sys.executable, '-c', {code!r}, {str(pid_file)!r}], 120)\n"
            ),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        pids = _wait_for_pids(pid_file)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while not _gone(pids[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(pids[0]), "pip outlived the process that started it"
    finally:
        parent.kill()
        for pid in _wait_for_pids(pid_file):
            with contextlib.suppress(OSError):
                os.kill(pid, 9)


@pytest.mark.parametrize("where", ["under-a-file", "lock-is-a-folder", "proc"])
def test_unusable_data_folder_names_kd_data_dir(tmp_path: Path, monkeypatch, where: str) -> None:
    from kdhelpers.paths import UnwritableFolderError

    if where == "under-a-file":
        (tmp_path / "file").write_text("x")
        folder = tmp_path / "file" / "data"
    elif where == "lock-is-a-folder":  # opening .vader.lock fails, as on a read-only folder
        folder = tmp_path / "data"
        (folder / ".vader.lock").mkdir(parents=True)
    else:
        folder = Path("/proc/kd-course-data")
    monkeypatch.setenv("KD_DATA_DIR", str(folder))
    with pytest.raises(UnwritableFolderError, match="KD_DATA_DIR") as info:
        fetch_vader_corpora(sdist_path=tmp_path / "unused.tar.gz")
    assert str(folder) in str(info.value) and "folder you can write" in str(info.value)
    cli = subprocess.run(
        [sys.executable, "-m", "kdhelpers.data", "fetch", "--sdist", "x.tar.gz"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "KD_DATA_DIR": str(folder), "PYTHONPATH": str(REPO)},
    )
    assert cli.returncode == 1 and "KD_DATA_DIR" in cli.stderr and "Traceback" not in cli.stderr
    if where == "under-a-file":
        with pytest.raises(UnwritableFolderError, match="data_dir="):
            fetch_vader_corpora(folder)


def test_killed_fetch_folders_are_removed_even_when_the_data_is_verified(
    tmp_path: Path, vader_sdist: Path
) -> None:
    fetch_vader_corpora(tmp_path, sdist_path=vader_sdist)
    for name in (".vader-old-0123", ".vader-staging-4567"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tweets_GroundTruth.txt").write_text("debris")
    assert fetch_vader_corpora(tmp_path) == tmp_path / "vader"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("bad", [["movies"], ("movies", "nyt"), None, 3, b"movies"])
def test_domain_that_is_not_one_name_is_refused_clearly(bad):
    with pytest.raises((TypeError, ValueError), match="domain"):
        load_sentiment(bad)
