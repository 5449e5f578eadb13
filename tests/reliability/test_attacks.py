"""R8: what was tried as an attacker would (issue 33), each row's reproduction through the real server.

One server (pool routing, no background scorer) on private copies of two real scans, with the reliability suite's
users; its temporary folder is a folder of its own (``TMPDIR``), so that what a refused upload leaves behind can be
seen. A small ``storage.max_upload_mb`` (64) keeps the too-large uploads quick. Chromium (Debian's, headless) plays a
page of another origin on the same host.
"""

from __future__ import annotations

import gzip
import http.server
import io
import json
import socket
import tarfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests
import yaml
from playwright.sync_api import sync_playwright

from amoslabel.config import load_config
from review.service import ReviewService
from tests.conftest import CHROMIUM_FLAGS, OUTPUT, ServerProcess, free_port
from tests.reliability.conftest import PEOPLE, TeamServer, private_studies, write_config
from tests.review.conftest import LABEL, add_users

CASE = "ct_small"
UPLOAD_LIMIT_MB = 64
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def site(shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks")
    config_path = write_config(root, routing="pool", scoring=False)
    config = yaml.safe_load(config_path.read_text())
    config["storage"]["max_upload_mb"] = UPLOAD_LIMIT_MB
    config_path.write_text(yaml.safe_dump(config))
    studies = private_studies(shared, root, final="mr_small")
    tokens = add_users(studies, PEOPLE)
    temp = root / "server-tmp"
    temp.mkdir()
    conf = {"preset": "cpu-fast", "config": str(config_path)}
    process = ServerProcess(studies, root, conf, env={"TMPDIR": str(temp)})
    service = ReviewService(load_config(config_path), str(studies))
    try:
        process.wait_ready()
        server = TeamServer(process, studies, tokens, root / "sources", {"config": config_path, "tmp": temp})
        yield server, service
    finally:
        process.stop()
        service.store.dispose()


def j1_holds_the_case(service: ReviewService) -> None:
    """j1 is the case's junior (the uploads below are then refused for their content, not for whose case it is)."""
    if service.workflow.register_case(CASE) == "new":
        service.workflow.record_prelabel(CASE, LABEL, "prior", {})
    service.workflow.claim(service.accounts.by_name("j1"), CASE)


def bearer(server: TeamServer, who: str) -> dict:
    return {"Authorization": f"Bearer {server.tokens[who]}"}


def files_in(folder: Path) -> set:
    return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}


# -- row 1 and 5: inference sessions --------------------------------------------------------------------------------
def test_a_session_archive_is_refused_and_nothing_is_written_outside(site, tmp_path):
    server, _ = site
    target = tmp_path / "escaped.txt"
    entry = "../" * 40 + str(target).lstrip("/")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        data = b"written by the sender"
        info = tarfile.TarInfo(entry)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    reply = requests.put(
        f"{server.url}/session/?uncompress=true",
        files=[("files", ("evil.tar", archive.getvalue()))],
        headers=bearer(server, "j1"),
        timeout=60,
    )
    assert reply.status_code == 400 and "archives are not unpacked" in reply.json()["detail"], reply.text
    assert not target.exists()
    assert server.process.alive()


def test_a_session_is_its_owners_alone_and_its_answer_names_no_server_path(site, shared):
    server, _ = site
    scan = (shared / "ct" / "ts_abdomen_ct_small.nii.gz").read_bytes()
    made = requests.put(
        f"{server.url}/session/", files=[("files", ("scan.nii.gz", scan))], headers=bearer(server, "j1"), timeout=60
    )
    assert made.status_code == 200, made.text
    session_id = made.json()["session_id"]
    assert "/" not in json.dumps(made.json()["session_info"]).replace("\\/", ""), made.text  # no server path
    other = bearer(server, "j2")
    assert requests.get(f"{server.url}/session/{session_id}", headers=other, timeout=30).status_code == 404
    assert requests.delete(f"{server.url}/session/{session_id}", headers=other, timeout=30).status_code == 404
    taken = requests.post(f"{server.url}/infer/prior?session_id={session_id}", headers=other, timeout=120)
    assert taken.status_code == 404, taken.text
    assert requests.get(f"{server.url}/session/../../etc", headers=other, timeout=30).status_code == 404
    mine = requests.get(f"{server.url}/session/{session_id}", headers=bearer(server, "j1"), timeout=30)
    assert mine.status_code == 200 and mine.json()["name"] == session_id
    assert requests.delete(f"{server.url}/session/{session_id}", headers=bearer(server, "j1"), timeout=30).ok


# -- row 2: CORS ----------------------------------------------------------------------------------------------------
class _EvilPage(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self):  # noqa: N802 - http.server's name
        body = (
            "<html><body><script>"
            f"fetch('{self.target}/review/cases/{CASE}', {{credentials: 'include'}})"
            ".then(r => r.text()).then(t => {document.title = 'READ ' + t.length})"
            ".catch(e => {document.title = 'BLOCKED'});"
            "</script></body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_no_other_origin_reads_a_logged_in_readers_pages(site):
    server, _ = site
    evil_origin = f"http://127.0.0.1:{free_port()}"
    reply = requests.get(f"{server.url}/info/", headers={**bearer(server, "s1"), "Origin": evil_origin}, timeout=30)
    assert reply.ok and "access-control-allow-origin" not in reply.headers
    preflight = requests.options(
        f"{server.url}/datastore/label",
        headers={"Origin": evil_origin, "Access-Control-Request-Method": "PUT"},
        timeout=30,
    )
    assert "access-control-allow-origin" not in preflight.headers
    review = requests.get(f"{server.url}/review/login", headers={"Origin": evil_origin}, timeout=30)
    assert not [h for h in review.headers if h.lower().startswith("access-control")]

    # a senior logged in on the server; a page of another port of the same host tries to read their case page
    handler = type("Evil", (_EvilPage,), {"target": server.url})
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", int(evil_origin.rsplit(":", 1)[1])), handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_context().new_page()
            page.goto(f"{server.url}/review/login")
            page.fill("#token", server.tokens["s1"])
            page.click("#login")
            page.wait_for_url(f"{server.url}/review/")
            page.goto(evil_origin)
            page.wait_for_function("document.title.length > 0", timeout=30000)
            assert page.title() == "BLOCKED"
            browser.close()
    finally:
        evil.shutdown()


# -- row 3 and 4: memory and uploads --------------------------------------------------------------------------------
class PeakMemory:
    """The largest resident size of a process (and its children) while the block runs, sampled every 20 ms."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.peak = self.before = self._rss()
        self._stop = threading.Event()

    def _rss(self) -> int:
        total = self.process.memory_info().rss
        for child in self.process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.02)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def grew_mb(self) -> float:
        return (self.peak - self.before) / 2**20


def nifti_bomb(shape, dtype, data_bytes: int) -> bytes:
    """A gzipped NIfTI whose header declares ``shape`` of ``dtype``, followed by ``data_bytes`` zeros (a bomb: the
    header asks for gigabytes, the file is small)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_zooms((1.0, 1.0, 1.0))
    raw = io.BytesIO()
    raw.write(header.binaryblock)
    raw.write(b"\0" * 4)  # the extension flag: the data starts at 352
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        gz.write(raw.getvalue())
        chunk = b"\0" * (1 << 24)
        left = data_bytes
        while left > 0:
            gz.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return out.getvalue()


def test_a_small_bomb_is_refused_from_its_header_without_the_memory(site):
    server, service = site
    j1_holds_the_case(service)
    bomb = nifti_bomb((1024, 1024, 1000), np.uint8, 1 << 30)  # 1 GB of zeros, about 1 MB gzipped
    assert len(bomb) < 2 << 20
    with PeakMemory(server.process.process.pid) as memory:
        reply = requests.post(
            f"{server.url}/infer/prior", files={"file": ("b.nii.gz", bomb)}, headers=bearer(server, "j1"), timeout=300
        )
    assert reply.status_code == 413 and "voxels" in reply.json()["detail"], reply.text
    assert memory.grew_mb < 200, f"the server grew by {memory.grew_mb:.0f} MB"
    bomb_growth = memory.grew_mb
    # a label twice the byte budget of a scan and off the scan's grid: refused by its header, before a voxel is read
    label = nifti_bomb((512, 512, 512), np.float64, 16 << 20)
    with PeakMemory(server.process.process.pid) as memory:
        reply = requests.put(
            f"{server.url}/datastore/label?image={CASE}&tag=draft",
            files={"label": ("label.nii.gz", label)},
            data={"params": json.dumps({"client_id": "j1"})},
            headers=bearer(server, "j1"),
            timeout=300,
        )
    assert reply.status_code in (413, 422), reply.text
    assert memory.grew_mb < 200, f"the server grew by {memory.grew_mb:.0f} MB"
    assert server.process.alive()
    figures = {"infer_bomb_grew_mb": round(bomb_growth, 1), "label_bomb_grew_mb": round(memory.grew_mb, 1)}
    (OUTPUT / "reliability").mkdir(parents=True, exist_ok=True)
    (OUTPUT / "reliability" / "attacks_memory.json").write_text(json.dumps(figures, indent=1))


def test_uploads_past_the_limit_are_cut_off_and_refused_uploads_leave_no_file(site, shared):
    server, service = site
    j1_holds_the_case(service)
    temp = server.extra["tmp"]
    before = files_in(temp)
    # a body that says it is 3 GiB: answered at once, nothing read
    with socket.create_connection(("127.0.0.1", server.process.port), timeout=30) as raw:
        raw.sendall(
            b"PUT /datastore/label?image=" + CASE.encode() + b"&tag=draft HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + server.tokens["j1"].encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 3221225472\r\n\r\n--b\r\n"
        )
        answer = raw.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    # a body streamed without a length, past the limit: cut off at the limit
    sent = {"bytes": 0}

    def stream():
        yield b'--b\r\nContent-Disposition: form-data; name="label"; filename="big.nii.gz"\r\n\r\n'
        chunk = b"\0" * (1 << 20)
        for _ in range(UPLOAD_LIMIT_MB * 2):
            sent["bytes"] += len(chunk)
            yield chunk

    try:
        reply = requests.put(
            f"{server.url}/datastore/label?image={CASE}&tag=draft",
            data=stream(),
            headers={**bearer(server, "j1"), "Content-Type": "multipart/form-data; boundary=b"},
            timeout=120,
        )
        assert reply.status_code == 413 and "limit" in reply.text, reply.text
    except requests.ConnectionError:
        pass  # the server closed the connection after its 413 while the client was still sending: also a refusal
    # refused uploads of every kind leave nothing in the server's temporary folder
    corrupt = b"\x1f\x8b not a NIfTI file at all"
    refused = [
        requests.put(
            f"{server.url}/datastore/label?image={CASE}&tag=draft",
            files={"label": ("bad.nii.gz", corrupt)},
            data={"params": json.dumps({"client_id": "j1"})},
            headers=bearer(server, "j1"),
            timeout=60,
        ),
        requests.post(
            f"{server.url}/infer/prior", files={"file": ("b.nii.gz", corrupt)}, headers=bearer(server, "j1"), timeout=60
        ),
        requests.put(
            f"{server.url}/datastore/image?image=bad_scan",
            files={"file": ("bad.nii.gz", corrupt)},
            headers=bearer(server, "boss"),
            timeout=60,
        ),
    ]
    assert [r.status_code for r in refused] == [400, 400, 400], [r.text for r in refused]
    assert not [r for r in refused if "/tmp" in r.text or str(temp) in r.text]  # no server path in a message
    time.sleep(1)
    left = {p for p in files_in(temp) - before if "amoslabel-results" not in str(p)}
    assert not left, left
    assert server.process.alive()


# -- rows 6 to 8: logins, passwords, logout -------------------------------------------------------------------------
def test_wrong_passwords_are_throttled_per_user_and_address_and_never_lock_the_user_out(site):
    server, service = site
    service.accounts.set_password("s4", "a-good-password-for-s4", actor="tests")
    token = f"{server.url}/auth/token"
    answers = [
        requests.post(token, data={"username": "s4", "password": f"wrong-{n}"}, timeout=30).status_code
        for n in range(8)
    ]
    assert answers[:5] == [401] * 5 and 429 in answers[5:], answers
    waiting = requests.post(token, data={"username": "s4", "password": "a-good-password-for-s4"}, timeout=30)
    assert waiting.status_code == 429 and int(waiting.headers["Retry-After"]) >= 1, waiting.text
    # the same user from another address (HAProxy's X-Forwarded-For, trusted from this machine) is not held up
    elsewhere = requests.post(
        token,
        data={"username": "s4", "password": "a-good-password-for-s4"},
        headers={"X-Forwarded-For": "10.20.30.40"},
        timeout=30,
    )
    assert elsewhere.status_code == 200, elsewhere.text
    # the review pages' login is throttled alike
    page = requests.Session()
    for n in range(7):
        form = page.get(f"{server.url}/review/login", timeout=30).text
        csrf = form.split('name="csrf_token" value="')[1].split('"')[0]
        last = page.post(
            f"{server.url}/review/login",
            data={"username": "s3", "token": f"wrong-{n}", "csrf_token": csrf},
            timeout=30,
        )
    assert last.status_code == 429 and "Retry-After" in last.headers


def test_passwords_are_checked_and_a_change_needs_the_old_one_and_ends_other_sessions(site):
    server, service = site
    service.accounts.set_password("j2", "j2-first-good-password", actor="tests")
    login = lambda: requests.post(  # noqa: E731
        f"{server.url}/auth/token", data={"username": "j2", "password": "j2-first-good-password"}, timeout=30
    ).json()["access_token"]
    other_session, this_session = login(), login()
    me = {"Authorization": f"Bearer {this_session}"}
    change = f"{server.url}/review/api/me/password"
    for weak in (" " * 12, "\0" * 12, "password1234", "short"):
        reply = requests.post(change, json={"current_password": "j2-first-good-password", "password": weak}, headers=me)
        assert reply.status_code == 400, (weak, reply.text)
    assert requests.post(change, json={"password": "j2-new-good-password-9"}, headers=me).status_code == 400
    guess = {"current_password": "nope-nope-nope", "password": "j2-new-good-pw-9"}
    wrong = requests.post(change, json=guess, headers=me)
    assert wrong.status_code == 403, wrong.text
    done = requests.post(
        change, json={"current_password": "j2-first-good-password", "password": "j2-new-good-password-9"}, headers=me
    )
    assert done.status_code == 200 and done.json()["other_sessions_ended"] >= 1, done.text
    assert requests.get(f"{server.url}/review/api/me", headers=me).status_code == 200  # this session goes on
    ended = requests.get(f"{server.url}/review/api/me", headers={"Authorization": f"Bearer {other_session}"})
    assert ended.status_code == 401
    assert requests.get(f"{server.url}/review/api/me", headers=bearer(server, "j2")).status_code == 200  # API token
    admin_sets_weak = requests.post(
        f"{server.url}/review/api/users/j2/password", json={"password": "qwertyuiop"}, headers=bearer(server, "boss")
    )
    assert admin_sets_weak.status_code == 400, admin_sets_weak.text


def test_logging_out_ends_the_session_on_the_server(site):
    server, _ = site
    browser = requests.Session()
    form = browser.get(f"{server.url}/review/login", timeout=30).text
    csrf = form.split('name="csrf_token" value="')[1].split('"')[0]
    browser.post(f"{server.url}/review/login", data={"token": server.tokens["s2"], "csrf_token": csrf}, timeout=30)
    assert browser.get(f"{server.url}/review/", allow_redirects=False, timeout=30).status_code == 200
    cookie = dict(browser.cookies)
    page = browser.get(f"{server.url}/review/", timeout=30).text
    csrf = page.split('name="csrf_token" value="')[1].split('"')[0]
    browser.post(f"{server.url}/review/logout", data={"csrf_token": csrf}, timeout=30)
    replayed = requests.get(f"{server.url}/review/", cookies=cookie, allow_redirects=False, timeout=30)
    assert replayed.status_code == 302 and "/review/login" in replayed.headers["Location"]
    # the API token the session was opened with lives on
    assert requests.get(f"{server.url}/review/api/me", headers=bearer(server, "s2"), timeout=30).status_code == 200


# -- row 9: names, tags and ids -------------------------------------------------------------------------------------
def test_a_trailing_newline_is_refused_before_anything_logs_it(site, shared):
    server, _ = site
    scan = (shared / "ct" / "ts_abdomen_ct_small.nii.gz").read_bytes()
    image = requests.put(
        f"{server.url}/datastore/image", params={"image": "xss\n"}, files={"file": ("x.nii.gz", scan)},
        headers=bearer(server, "boss"), timeout=60,
    )  # fmt: skip
    assert image.status_code == 400, image.text
    user = requests.post(
        f"{server.url}/review/api/users", json={"name": "trail\n", "role": "junior"}, headers=bearer(server, "boss")
    )
    assert user.status_code == 400, user.text
    forged = "final\n[2026-01-01 00:00:00] INFO forged: admin granted"
    label = requests.put(
        f"{server.url}/datastore/label", params={"image": CASE, "tag": forged},
        files={"label": ("l.nii.gz", LABEL.read_bytes())}, headers=bearer(server, "j1"), timeout=60,
    )  # fmt: skip
    assert label.status_code == 400, label.text
    assert "forged: admin granted" not in server.process.log_path.read_text()


# -- row 10: blind review -------------------------------------------------------------------------------------------
def test_seniors_vote_blind_until_they_have_voted(site, tmp_path):
    server, service = site
    people = {name: service.accounts.by_name(name) for name, _ in PEOPLE}
    workflow = service.workflow
    j1_holds_the_case(service)
    workflow.submit(people["j1"], CASE)
    api = lambda who, method, path, **kw: requests.request(  # noqa: E731
        method, f"{server.url}/review/api{path}", headers=bearer(server, who), timeout=60, **kw
    )
    secret = "s1 thinks the spleen is cut short"
    for who in ("s1", "s2"):
        assert api(who, "POST", f"/cases/{CASE}/claim").status_code == 200
    edit = api("s1", "POST", f"/cases/{CASE}/label", files={"label": ("l.nii.gz", LABEL.read_bytes())})
    assert edit.status_code == 200, edit.text
    vote = {"organ": "spleen", "decision": "changes_requested", "comment": secret}
    assert api("s1", "POST", f"/cases/{CASE}/reviews", json={"votes": [vote], "default": "approve"}).ok

    def sees_s1(who: str) -> dict:
        detail = api(who, "GET", f"/cases/{CASE}").json()
        text = json.dumps(detail)
        history = json.dumps(api(who, "GET", f"/cases/{CASE}/history").json())
        return {
            "votes": "s1" in json.dumps(detail["votes"]),
            "comments": secret in text,
            "edit": any(v["kind"] == "senior_edit" for v in detail["versions"]),
            "history": "s1" in history and "organ decisions" in history,
            "blind": detail["blind"],
        }

    hidden = {"votes": False, "comments": False, "edit": False, "history": False, "blind": True}
    assert sees_s1("s2") == hidden  # assigned, not voted yet
    assert sees_s1("s3") == hidden  # could claim it, not voted
    assert sees_s1("boss") == {**hidden, "blind": False, "votes": True, "comments": True, "edit": True, "history": True}
    page = requests.Session()
    form = page.get(f"{server.url}/review/login", timeout=30).text
    csrf = form.split('name="csrf_token" value="')[1].split('"')[0]
    page.post(f"{server.url}/review/login", data={"token": server.tokens["s2"], "csrf_token": csrf}, timeout=30)
    assert secret not in page.get(f"{server.url}/review/cases/{CASE}", timeout=30).text
    # once s2 has voted, the round is open to them
    assert api("s2", "POST", f"/cases/{CASE}/reviews", json={"votes": [], "default": "approve"}).ok
    assert sees_s1("s2") == {"votes": True, "comments": True, "edit": True, "history": True, "blind": False}
    assert secret in page.get(f"{server.url}/review/cases/{CASE}", timeout=30).text


# -- row 11 and 12: fairness and what the server tells -------------------------------------------------------------
def test_a_user_has_a_fair_share_of_inference_and_review_reads_go_on(site):
    server, _ = site
    answers, reads = [], []

    def infer():
        reply = requests.post(f"{server.url}/infer/prior?image={CASE}", headers=bearer(server, "j2"), timeout=300)
        answers.append(reply.status_code)

    threads = [threading.Thread(target=infer) for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        started = time.perf_counter()
        status = requests.get(f"{server.url}/review/api/me", headers=bearer(server, "s1")).status_code
        reads.append((status, time.perf_counter() - started))
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert sorted(answers).count(429) >= 1 and 200 in answers, answers
    assert reads and {status for status, _ in reads} == {200}, reads
    figures = {
        "infer_answers": sorted(answers),
        "review_reads": len(reads),
        "review_read_median_ms": round(1000 * float(np.median([s for _, s in reads])), 1),
    }
    (OUTPUT / "reliability").mkdir(parents=True, exist_ok=True)
    (OUTPUT / "reliability" / "attacks_fairness.json").write_text(json.dumps(figures, indent=1))


def test_what_the_server_tells_anyone(site):
    server, _ = site
    health = requests.get(f"{server.url}/health", timeout=30)
    assert health.json() == {"status": "ok"}
    assert requests.get(f"{server.url}/", allow_redirects=False, timeout=30).headers["Location"].endswith("/review/")
    docs = requests.get(f"{server.url}/docs", timeout=30)
    assert docs.status_code == 404 and "/openapi.json" in docs.json()["detail"]
    info = requests.get(f"{server.url}/info/", headers=bearer(server, "j1"), timeout=30)
    assert info.headers["X-Content-Type-Options"] == "nosniff" and "X-Frame-Options" in info.headers
    sample = requests.post(
        f"{server.url}/activelearning/random", json={"client_id": "j1"}, headers=bearer(server, "j1"), timeout=60
    ).json()
    assert sample.get("id") and "path" not in sample, sample


def test_the_session_cookie_is_secure_when_configured(site):
    """In process (Flask's own test client on the server's store): ``auth.cookie_secure`` marks the cookie."""
    server, _ = site
    from review.api import create_review_api

    config = load_config(server.extra["config"])
    secure = config.model_copy(update={"auth": config.auth.model_copy(update={"cookie_secure": True})})
    service = ReviewService(secure, str(server.studies))
    try:
        client = create_review_api(service).test_client()
        form = client.get("/login").get_data(as_text=True)
        csrf = form.split('name="csrf_token" value="')[1].split('"')[0]
        reply = client.post("/login", data={"token": server.tokens["j1"], "csrf_token": csrf})
        cookie = reply.headers.get("Set-Cookie", "")
        assert reply.status_code == 302 and "Secure" in cookie and "HttpOnly" in cookie, cookie
    finally:
        service.store.dispose()
