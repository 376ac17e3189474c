"""The user cache's lock: while one process makes an entry, another asking for the same one waits;
other entries are free; without a writable cache nothing is locked and nothing fails."""

import subprocess
import sys

from ffnbench import files

TRY_LOCK = """
import fcntl, sys
handle = open(sys.argv[1], "w")
try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("held")
"""


def other_process_sees(lock_file) -> str:
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(lock_file)], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def test_an_entry_being_made_is_held_against_other_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with files.cache_lock("lm-export-A-0123"):
        assert other_process_sees(files.cache_dir() / ".lm-export-A-0123.lock") == "held"
        assert other_process_sees(files.cache_dir() / ".lm-export-B-4567.lock") == "free"
    assert other_process_sees(files.cache_dir() / ".lm-export-A-0123.lock") == "free"


def test_an_unwritable_cache_locks_nothing_and_the_work_goes_on(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a file where the cache folder would be
    done = []
    with files.cache_lock("entry"):
        done.append(True)
    assert done == [True]
