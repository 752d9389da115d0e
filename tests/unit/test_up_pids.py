"""`cryptomon up`'s pid file is replaced whole: a reader never sees it cut short (a CI run of test_up read
an empty up.json while `up` rewrote it after a restart)."""

from __future__ import annotations

import json
import threading

from cryptomon.supervisor import write_atomically


def test_a_reader_sees_every_pid_file_whole_while_it_is_rewritten(tmp_path):
    path = tmp_path / "state" / "up.json"
    write_atomically(path, json.dumps({"worker": 0}))
    seen, bad = [], []
    stop = threading.Event()

    def read():
        while not stop.is_set():
            text = path.read_text()  # os.replace: the file is always there
            try:
                seen.append(json.loads(text)["worker"])
            except ValueError:
                bad.append(text)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(1, 3001):
        write_atomically(path, json.dumps({"worker": i, "up": 1}))
    stop.set()
    reader.join()
    assert bad == [] and seen and max(seen) <= 3000
    assert json.loads(path.read_text()) == {"worker": 3000, "up": 1}
    assert [p.name for p in path.parent.iterdir()] == ["up.json"]  # no partial file left
