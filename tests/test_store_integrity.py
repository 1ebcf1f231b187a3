"""Lost data never reads as zeros: a store's chunk inventory (sizes, sha256) is written with it, checked
on open, and fully by ``fastpolicy data verify`` (a deleted chunk of ``action`` read as
actions of 0 in ``data info``, ``train`` and ``export``; a truncated one gave a bare blosc error)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fastpolicy.data.store import MANIFEST_NAME, EpisodeStore, StoreIntegrityError, verify_store

CLI = [sys.executable, "-m", "fastpolicy.cli"]


@pytest.fixture
def chunked_store(tmp_path):
    """1000 steps in chunks of 256 rows: four chunks per array."""
    rng = np.random.default_rng(0)
    data = {"obs": rng.normal(size=(1000, 3)), "action": rng.uniform(0.5, 1.0, size=(1000, 2)),
            "reward": rng.normal(size=1000)}
    return EpisodeStore.from_arrays(tmp_path / "store", data, [400, 1000], chunk_steps=256).path


def test_manifest_records_every_chunk_and_a_clean_store_verifies(chunked_store):
    manifest = json.loads((chunked_store / MANIFEST_NAME).read_text())
    assert sorted(manifest["arrays"]["data/action"]) == ["c/0/0", "c/1/0", "c/2/0", "c/3/0"]
    assert "meta/episode_ends" in manifest["arrays"]
    report = verify_store(chunked_store)
    assert report.ok and report.has_manifest and report.chunks >= 12
    done = subprocess.run([*CLI, "data", "verify", str(chunked_store)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("ok:"), done.stderr


def test_missing_chunk_is_a_clear_error_not_zeros(chunked_store, tmp_path):
    (chunked_store / "data" / "action" / "c" / "1" / "0").unlink()
    with pytest.raises(StoreIntegrityError, match=r"array 'data/action' chunk c/1/0 is missing"):
        EpisodeStore.open(chunked_store)
    # As a user meets it: every reader refuses with one line, no command succeeds on zeroed data.
    commands = {
        "info": [*CLI, "data", "info", str(chunked_store), "--no-png"],
        "verify": [*CLI, "data", "verify", str(chunked_store)],
    }
    procs = {k: subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in commands.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode != 0, (name, out)
        assert "data/action' chunk c/1/0 is missing" in err and "Traceback" not in err, (name, err)
    from fastpolicy.data.d4rl import export_d4rl

    with pytest.raises(StoreIntegrityError, match="chunk c/1/0 is missing"):
        export_d4rl(chunked_store, tmp_path / "x.hdf5")
    assert not (tmp_path / "x.hdf5").exists()


def test_truncated_and_corrupted_chunks_are_named(chunked_store):
    chunk = chunked_store / "data" / "obs" / "c" / "2" / "0"
    original = chunk.read_bytes()
    chunk.write_bytes(original[: len(original) // 2])  # truncated: caught by the cheap check on open
    with pytest.raises(StoreIntegrityError, match=r"array 'data/obs' chunk c/2/0 is damaged"):
        EpisodeStore.open(chunked_store)
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF  # same size: only the checksum tells
    chunk.write_bytes(bytes(flipped))
    report = verify_store(chunked_store)
    assert not report.ok
    assert any("'data/obs' chunk c/2/0 is damaged (sha256 mismatch)" in p for p in report.problems)


def test_lost_array_or_manifest_is_damage_not_a_smaller_or_older_store(chunked_store):
    """zarr lists only arrays whose zarr.json is there, and a store without manifest.json would pass for
    one written before manifests: both used to open silently (and verify said ok)."""
    manifest = chunked_store / MANIFEST_NAME
    saved = manifest.read_bytes()
    manifest.unlink()
    with pytest.raises(StoreIntegrityError, match="manifest.json is missing although the store was written"):
        EpisodeStore.open(chunked_store)
    assert not verify_store(chunked_store).ok
    manifest.write_bytes(saved)
    (chunked_store / "data" / "reward" / "zarr.json").unlink()
    with pytest.raises(StoreIntegrityError, match=r"array 'data/reward' is missing"):
        EpisodeStore.open(chunked_store)
    assert any("'data/reward' is missing" in p for p in verify_store(chunked_store).problems)
