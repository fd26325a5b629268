"""A minimal Messages API upstream for the aarch64 VM check: TLS on 127.0.0.1:8443 with a
certificate for localhost (its CA is /vm/ca.pem), one JSON reply to every POST, and a log of
what arrived (method, path, Authorization) in /tmp/mock.log for the init script to check."""
import http.server
import json
import ssl

LOG = open("/tmp/mock.log", "a", buffering=1)
REPLY = json.dumps({
    "id": "msg_vm", "type": "message", "role": "assistant", "model": "vm-mock",
    "content": [{"type": "text", "text": "vm-mock-reply"}],
    "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1},
}).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        LOG.write(f"{self.command} {self.path} authorization={self.headers.get('authorization')}\n")
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(REPLY)))
        self.end_headers()
        self.wfile.write(REPLY)


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/vm/server.pem", "/vm/server.key")
server = http.server.HTTPServer(("127.0.0.1", 8443), Handler)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
open("/tmp/mock.ready", "w").close()
server.serve_forever()
