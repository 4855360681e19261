"""``qlevents backup`` and ``qlevents restore``: a copy made while serving, put back when not."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import RunCli
from tests.support import RunningServer, view


class TestBackupAndRestore:
    def test_a_backup_made_while_serving_restores_events_and_accounts(
        self, server: RunningServer, cli: RunCli, tmp_path: Path
    ) -> None:
        """backup lists the files it copied; restore into a new directory brings them back."""
        server.post([view(server.client_key, product_id=f"p{i}") for i in range(5)])
        code, out, err = cli("backup", str(tmp_path / "b"), "--data-dir", str(server.data_dir))
        assert code == 0, err
        assert out.startswith(f"Backed up {server.data_dir} into {tmp_path / 'b'}:\n")
        assert "accounts.sqlite3" in out and "events.sqlite3" in out
        code, out, err = cli("restore", str(tmp_path / "b"), "--data-dir", str(tmp_path / "new"))
        assert code == 0, err
        assert out.startswith("Restored events.sqlite3, ")
        _, out, _ = cli("events", "export", "--data-dir", str(tmp_path / "new"))
        assert [json.loads(line)["product_id"] for line in out.splitlines()] == [
            f"p{i}" for i in range(5)
        ]
        _, out, _ = cli("accounts", "show", "demo", "--data-dir", str(tmp_path / "new"))
        assert server.client_key in out

    def test_restore_is_refused_while_a_server_uses_the_directory(
        self, server: RunningServer, cli: RunCli, tmp_path: Path
    ) -> None:
        """Even with --force: the serving process's lock says who uses it."""
        assert server.process is not None
        cli("backup", str(tmp_path / "b"), "--data-dir", str(server.data_dir))
        code, out, err = cli(
            "restore", str(tmp_path / "b"), "--force", "--data-dir", str(server.data_dir)
        )
        assert code == 1 and out == ""
        assert f"another qlevents serve (pid {server.process.pid})" in err
        server.stop()
        code, _, err = cli("restore", str(tmp_path / "b"), "--data-dir", str(server.data_dir))
        assert code == 1 and "pass --force to replace them" in err
        code, _, err = cli(
            "restore", str(tmp_path / "b"), "--force", "--data-dir", str(server.data_dir)
        )
        assert code == 0, err

    def test_mistakes_are_errors_not_tracebacks(self, tmp_path: Path, cli: RunCli) -> None:
        """Restoring what is not a backup, or backing up into a full directory: Error:, 1."""
        (tmp_path / "data").mkdir()
        code, _, err = cli("restore", str(tmp_path), "--data-dir", str(tmp_path / "data"))
        assert code == 1 and err.startswith(f"Error: {tmp_path} is not a qlevents backup")
        cli("accounts", "add", "shop", "--data-dir", str(tmp_path / "data"))
        code, _, err = cli("backup", str(tmp_path), "--data-dir", str(tmp_path / "data"))
        assert (
            code == 1
            and err == f"Error: {tmp_path} exists and is not empty; give a new directory\n"
        )
