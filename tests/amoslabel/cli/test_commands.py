"""The command line as a user runs it (``python -m amoslabel ...`` in a subprocess): clear reports and exit codes."""

from __future__ import annotations


from tests.conftest import amoslabel_command


def _cli(*args, timeout=120):
    return amoslabel_command(*args, timeout=timeout)


def test_check_config_command():
    ok = _cli("check-config", "--conf", "preset", "full")
    assert ok.returncode == 0 and '"preset": "full"' in ok.stdout
    bad = _cli("check-config", "--conf", "device", "tpu")
    assert bad.returncode == 2 and "'device'" in bad.stderr


def test_import_command_reports_skipped_cases_by_name(shared, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (source / "good.nii.gz").symlink_to(shared / "ct" / "ts_abdomen_ct_small.nii.gz")
    done = _cli("import", str(source), "--studies", str(tmp_path / "studies"))
    assert done.returncode == 3
    assert "imported 1" in done.stdout and "skipped broken" in done.stdout
    assert (tmp_path / "studies" / "good.nii.gz").exists()


def test_withdraw_and_purge_commands(shared, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "wrong.nii.gz").symlink_to(shared / "ct" / "ts_abdomen_ct_small.nii.gz")
    (source / "wrong_label.nii.gz").symlink_to(shared / "ct" / "ts_abdomen_ct_small_label.nii.gz")
    studies = tmp_path / "studies"
    assert _cli("import", str(source), "--studies", str(studies), "--link").returncode == 0
    assert (studies / "wrong.nii.gz").is_symlink()

    refused = _cli("withdraw", "wrong", "--studies", str(studies))
    assert refused.returncode == 2 and "--reason" in refused.stderr  # a reason is required
    done = _cli("withdraw", "wrong", "--studies", str(studies), "--reason", "consent withdrawn")
    assert done.returncode == 0 and "withdrawn" in done.stdout, done.stderr
    assert not (studies / "wrong.nii.gz").exists() and not (studies / "labels" / "final" / "wrong.nii.gz").exists()
    assert (studies / ".amoslabel" / "withdrawn" / "wrong" / "labels" / "final" / "wrong.nii.gz").is_file()
    history = _cli("case-history", "wrong", "--studies", str(studies)).stdout
    assert "withdraw" in history and "consent withdrawn" in history and "archive" in history

    unconfirmed = _cli("purge", "wrong", "--studies", str(studies), "--confirm", "other")
    assert unconfirmed.returncode == 2 and "repeat the case id" in unconfirmed.stderr
    purged = _cli("purge", "wrong", "--studies", str(studies), "--confirm", "wrong")
    assert purged.returncode == 0 and "purged" in purged.stdout, purged.stderr
    assert not (studies / ".amoslabel" / "withdrawn" / "wrong" / "labels").exists()
    assert (shared / "ct" / "ts_abdomen_ct_small.nii.gz").is_file()  # the linked source is untouched
    assert "purge" in _cli("case-history", "wrong", "--studies", str(studies)).stdout
