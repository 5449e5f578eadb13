"""Where a studies argument's files are: a folder, or a DICOMweb server's mirror under the user's cache folder."""

from __future__ import annotations

from pathlib import Path

from amoslabel.data.locations import cache_root, is_dicomweb, working_folder

URL = "http://127.0.0.1:8042/dicom-web"


def test_a_dicomweb_mirror_follows_the_xdg_cache_folder_and_an_explicit_base_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    default = cache_root(URL)
    assert default.parent == tmp_path / "home" / ".cache" / "amoslabel" / "dicomweb" and len(default.name) == 16
    assert cache_root(URL + "/") == default  # one mirror per server, whatever the trailing slash
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root(URL) == tmp_path / "xdg" / "amoslabel" / "dicomweb" / default.name
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG rule: a relative value is ignored
    assert cache_root(URL) == default
    assert cache_root(URL, str(tmp_path / "mine")) == tmp_path / "mine" / default.name
    assert is_dicomweb(URL) and not is_dicomweb(str(tmp_path))
    assert working_folder(str(tmp_path)) == Path(tmp_path) and working_folder(URL) == default
