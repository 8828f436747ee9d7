"""Webhooks on a farm: several API nodes watch one PostgreSQL queue; each finished training's
webhook is called exactly once, by whichever node claims it in the database."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Receiver(BaseHTTPRequestHandler):
    calls: list = []
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        time.sleep(0.05)  # a slow receiver widens the window in which nodes could race
        with _Receiver.lock:
            _Receiver.calls.append(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_three_api_nodes_call_each_webhook_exactly_once(postgres_url, tmp_path):
    from lorastudio.interfaces.api.training_jobs import WebhookNotifier
    from lorastudio.services.jobs import PostgresJobStore

    _Receiver.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    stores = [PostgresJobStore(postgres_url) for _ in range(4)]
    try:
        queue = stores[3]  # what the workers did: 9 trainings finished, one still running
        ids = [queue.submit("training", {"webhook_url": url}).id for _ in range(10)]
        quiet = queue.submit("training", {"webhook_url": None}).id
        for i, jid in enumerate([*ids, quiet]):
            assert queue.claim_next("w").id == jid
            if i == 9:
                continue
            assert queue.complete(jid, "w", {"n": i}) if i % 3 else queue.fail(jid, "w", "boom")
        # A node that claimed one call and died before making it.
        assert queue.claim_delivery(ids[0], "webhook", "dead-node", stale_after_s=1.0)

        # Three API nodes (own connection, own folder, as on three machines) poll at once.
        nodes = [WebhookNotifier(stores[i], tmp_path / f"node{i}", ["127.0.0.1"], stale_after_s=1.0)
                 for i in range(3)]
        start = threading.Barrier(3)
        sent = [0, 0, 0]

        def poll(i: int) -> None:
            start.wait()
            for _ in range(3):
                sent[i] += nodes[i].poll_once()

        threads = [threading.Thread(target=poll, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        by_job = sorted(c["request_id"] for c in _Receiver.calls)
        assert by_job == sorted(ids[1:9]), "each finished job once; not the running one, not the dead node's"
        assert sum(sent) == 8

        time.sleep(1.2)  # the dead node's claim ages out: one live node takes it over
        queue.complete(ids[9], "w", {"n": 9})
        assert sum(node.poll_once() for node in nodes) == 2
        by_job = sorted(c["request_id"] for c in _Receiver.calls)
        assert by_job == sorted(ids)
        assert {c["status"] for c in _Receiver.calls if c["request_id"] == ids[3]} == {"FAILED"}
        assert sum(node.poll_once() for node in nodes) == 0 and len(_Receiver.calls) == 10  # never again
        assert any("webhook" in line.message and "notified" in line.message for line in queue.logs(ids[0]))
    finally:
        server.shutdown()
        server.server_close()
        for s in stores:
            s.close()
