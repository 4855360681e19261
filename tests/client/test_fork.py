"""Fork safety: a forked child (gunicorn / uWSGI pre-fork) gets a sender of its own."""

from __future__ import annotations

from pathlib import Path

from tests.client.conftest import product_ids, run_script
from tests.support import RunningServer

FORK_AFTER_EVENTS = """
import os, sys
from qlevents import Client
client = Client(sys.argv[1], sys.argv[2], flush_interval=60)
for i in range(10):
    client.view(product_id=f"parent{i}", price=1, permalink="https://s.example/")
pid = os.fork()
if pid == 0:
    for i in range(5):
        client.view(product_id=f"child{i}", price=1, permalink="https://s.example/")
    ok = bool(client.flush(20))
    print("child", ok, client.stats()["stored"], flush=True)
    sys.exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
ok = bool(client.flush(20))
print("parent", ok, client.stats()["stored"], os.waitstatus_to_exitcode(status), flush=True)
"""

PRE_FORK_SERVER = """
import os, sys
from qlevents import Client
client = Client(sys.argv[1], sys.argv[2])  # created in the master, like a module global
children = []
for n in range(3):
    pid = os.fork()
    if pid == 0:
        for i in range(20):
            client.view(product_id=f"w{n}-{i}", price=1, permalink="https://s.example/")
        sys.exit(0)  # no flush: the child's exit delivers its events
    children.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
print("codes", codes, "parent sent", client.stats()["handed_to_network"], flush=True)
"""


class TestFork:
    def test_child_sends_its_own_events_and_never_the_parents(self, server: RunningServer) -> None:
        """Queued before fork: sent once, by the parent; the child's own: sent by the child."""
        done = run_script(FORK_AFTER_EVENTS, server.client_key, server.events_url)
        assert done.returncode == 0, done.stderr
        assert "child True 5" in done.stdout
        assert "parent True 10 0" in done.stdout
        expected = [f"parent{i}" for i in range(10)] + [f"child{i}" for i in range(5)]
        assert product_ids(server.stored()) == sorted(expected)

    def test_pre_fork_workers_each_deliver_at_exit(self, server: RunningServer) -> None:
        """A client made in a master process works in each forked worker, exit included."""
        done = run_script(PRE_FORK_SERVER, server.client_key, server.events_url)
        assert done.returncode == 0, done.stderr
        assert "codes [0, 0, 0] parent sent 0" in done.stdout
        expected = [f"w{n}-{i}" for n in range(3) for i in range(20)]
        assert product_ids(server.stored()) == sorted(expected)


SPOOL_FORK = """
import os, sys
from qlevents import Client
client = Client(sys.argv[1], sys.argv[2], spool_dir=sys.argv[3], flush_interval=0.05)
for i in range(10):
    client.view(product_id=f"parent{i}", price=1, permalink="https://s.example/")
pid = os.fork()
if pid == 0:
    for i in range(5):
        client.view(product_id=f"child{i}", price=1, permalink="https://s.example/")
    result = client.flush(20)
    print("child flushed", bool(result), result.stored, flush=True)
    sys.exit(0 if result else 3)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
result = client.flush(20)
print("child exit", code, "parent flushed", bool(result), result.stored, flush=True)
"""


class TestForkWithSpool:
    def test_parent_and_child_share_a_spool_and_each_event_is_sent_once(
        self, server: RunningServer, tmp_path: Path
    ) -> None:
        """After fork both write to the spool; only the lock holder sends; nothing twice;
        each one's flush() counts its own events stored, whichever process sent them."""
        done = run_script(SPOOL_FORK, server.client_key, server.events_url, str(tmp_path / "s"))
        assert done.returncode == 0, done.stderr
        assert "child flushed True 5" in done.stdout
        assert "child exit 0 parent flushed True 10" in done.stdout
        expected = [f"parent{i}" for i in range(10)] + [f"child{i}" for i in range(5)]
        assert product_ids(server.stored()) == sorted(expected)
