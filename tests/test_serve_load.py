"""A real uvicorn server on 127.0.0.1 under concurrent load for a few seconds, with hot reloads: zero errors."""
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from mixrec.serve import ServeSettings, create_app
from mixrec.train import train
from tests.conftest import small_config

DURATION_S = 3.0  # how long the load runs; nothing is asserted about timing
CLIENTS = 8


@pytest.fixture(scope="module")
def server(planted, tmp_path_factory):
    ds, _ = planted
    root = tmp_path_factory.mktemp("load")
    a = train(ds, small_config(1), root / "a", progress=False)
    b = train(ds, small_config(1, seed=3), root / "b", progress=False)
    app = create_app(ServeSettings(model_dir=str(a.path)))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield url, a, b
    srv.should_exit = True
    thread.join(10)
    sock.close()


def test_load_with_hot_reloads_has_zero_errors(server):
    url, a, b = server
    users, items = a.ids["user"].tolist(), a.ids["item"].tolist()
    stop = threading.Event()
    results: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    def worker(w: int):
        with httpx.Client(base_url=url, timeout=30) as c:
            i = 0
            while not stop.is_set():
                kind = i % 4
                u, it = users[(w * 31 + i) % len(users)], items[(w * 17 + i) % len(items)]
                try:
                    if kind == 0:
                        r = c.get(f"/v1/users/{u}/candidates", params={"k": 20})
                    elif kind == 1:
                        r = c.post("/v1/candidates", json={"users": [u, users[0]], "k": 10})
                    elif kind == 2:
                        r = c.post("/v1/candidates/from-history", json={"items": [it, items[0]], "k": 10})
                    else:
                        r = c.get(f"/v1/items/{it}/similar", params={"k": 5})
                    out = (str(kind), r.status_code, r.json().get("model", ""))
                except Exception as e:  # a transport error is a failed request too
                    out = (str(kind), -1, repr(e))
                with lock:
                    results.append(out)
                i += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(CLIENTS)]
    for t in threads:
        t.start()
    reloads = []
    with httpx.Client(base_url=url, timeout=60) as admin:
        end = time.monotonic() + DURATION_S
        n = 0
        while time.monotonic() < end:
            target = b if n % 2 == 0 else a
            reloads.append(admin.post("/admin/reload", json={"model_dir": str(target.path)}).status_code)
            n += 1
            time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(30)
    failed = [r for r in results if r[1] != 200]
    assert results and not failed, failed[:5]
    assert len(reloads) >= 2 and set(reloads) == {200}
    assert len({r[2] for r in results}) == 2  # both models answered during the run
    with httpx.Client(base_url=url) as c:
        text = c.get("/metrics").text
    assert 'status="500"' not in text and 'outcome="ok"' in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_workers_share_one_port_and_follow_a_reload(server):
    """`mixrec serve --workers 2`: two processes answer on one port; a reload through either reaches both."""
    import subprocess
    import sys
    from mixrec.serve.state import model_version
    _, a, b = server
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mixrec.cli", "serve", str(a.path), "--port", str(port),
                             "--workers", "2"], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        user = a.ids["user"].tolist()[0]

        def versions(n: int = 40) -> set[str]:  # fresh connections spread over both workers
            return {httpx.get(f"{url}/v1/users/{user}/candidates", params={"k": 5}).json()["model"]
                    for _ in range(n)}
        deadline = time.monotonic() + 120  # the second worker binds the port once its model is loaded
        while len({httpx.get(f"{url}/v1/model").json()["pid"] for _ in range(20)}) < 2:
            assert time.monotonic() < deadline, "only one worker answers"
            time.sleep(0.5)
        assert versions() == {model_version(a.path)}
        r = httpx.post(f"{url}/admin/reload", json={"model_dir": str(b.path)}, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == model_version(b.path)
        deadline = time.monotonic() + 30
        while (seen := versions()) != {model_version(b.path)}:
            assert time.monotonic() < deadline, f"workers still serve {seen}"
            time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(30)
