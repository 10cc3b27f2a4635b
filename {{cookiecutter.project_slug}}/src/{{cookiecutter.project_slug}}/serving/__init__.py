"""Serving: how this service runs as processes.

Gunicorn's master (gunicorn.conf.py) binds the sockets, forks one worker per usable CPU
(cpu.py) and replaces workers that die, recycle or are reloaded. Each worker runs the app
on Uvicorn's event loop with the worker class of gunicorn_worker.py: connections drain
instead of being dropped when it stops, workers take turns to recycle (by age or request
count), old workers stay through a reload until the new ones serve, request heads are
limited and timed and stamped with when they reached the worker, and the heap is frozen
once the app has started. Around the app, middleware.py gives every request an id, counts
it (metrics.py: Prometheus, summed over all the workers) and logs it (logs.py: JSON lines),
writing both once for many requests (turns.py); it also sheds load: a request
that waited too long for the worker, or past its limit in flight (admission.py: a limit
that follows the event loop), which the worker's protocol answers itself where it can.

Private APIs this relies on
---------------------------
None of the following is a documented interface of its library, so a release may change
it without notice. Each was read in uvicorn 0.54, uvicorn-worker 0.4, Gunicorn 27.0 and
prometheus-client 0.26, the lowest versions pyproject.toml accepts. After upgrading one of
these libraries, run `make test`: the tests named for each fail if what it relies on
changed.

uvicorn-worker: `Worker` subclasses `UvicornWorker`.
- `UvicornWorker._serve()` is replaced by a copy that runs `RecyclingServer` instead of
  Uvicorn's `Server`. A release that renames it leaves Uvicorn's server running: no
  turns, no staying through a reload, and no recycling at all (`limit_max_requests` is
  cleared here); one that adds a step to it is missing that step here.
  Breaks: tests/test_serving.py (the reload and the recycling tests).
- `UvicornWorker._install_sigquit_handler()`, called by that copy.
  Breaks: tests/test_serving.py (no worker boots).

Uvicorn's HTTP protocol: `ServingProtocol` subclasses `HttpToolsProtocol`, from
`uvicorn.protocols.http.httptools_impl` (Uvicorn documents its protocols by name, as
`--http httptools`; its `Config` also takes a class as `http`).
- `_unset_keepalive_if_required()`: cancels the keep-alive timer of a connection as it
  starts draining, so that the timer cannot close it before `DRAIN_GRACE`.
  Breaks: tests/test_serving.py (a stopping worker fails to drain: lost requests).
- `shutdown()`, which Uvicorn's server calls on every connection as the worker stops
  (stock: close idle connections at once), is overridden to drain them.
  Breaks: tests/test_serving.py (lost requests).
- httptools' parser callbacks as Uvicorn implements them (`on_message_begin`, `on_url`,
  `on_header`, `on_headers_complete`, `on_body`, `on_message_complete`), and
  `connection_made`, `data_received`, `eof_received`, are extended: to count a
  connection's requests, to enforce the request limits and timeouts, and to answer a
  draining connection's request with `Connection: close`.
- `send_400_response(msg)`, which Uvicorn calls inside its `except` for a parser error:
  a `Refused` raised by a callback is that error's `__context__`, and gets its own answer.
- `on_headers_complete` runs before Uvicorn starts the request's task, and `scope` (built
  in `on_message_begin`) is the dict the app receives: the protocol adds
  `scope["extensions"]["head_read_at"]` there, which the middleware's shedding reads.
  Breaks: tests/test_serving.py (the shedding tests: nothing is shed).
- Shedding in the protocol: `app_state` is the lifespan's `state` (the middleware puts the
  admission there); a shed request's `on_headers_complete` returns before Uvicorn's, so no
  cycle or task is made, and sets `cycle` to a stand-in whose `response_complete` makes
  `on_body` and `on_message_complete` drop the body (and whose `message_event` is set by
  `connection_lost`); then it calls `on_response_complete()`, which resumes reading and
  arms the keep-alive timer. It reads `expect_100_continue`, `parser.should_keep_alive()`,
  `parser.get_method()` and `pipeline` (pipelined requests not started yet, counted out in
  `connection_lost`). Breaks: tests/test_serving.py (the shedding tests: the app sees a
  request past the limit, or a shed connection fails).
- The protocol's state: `cycle` (a `RequestResponseCycle`: `keep_alive`,
  `response_complete`, `waiting_for_100_continue`), `parser.should_upgrade()`, `url`,
  `headers`, `flow.read_paused`, `transport`, `loop`; and its constructor's keywords
  `config`, `server_state`, `app_state` (the worker builds protocols itself for the
  connections it takes from the backlog as it stops, as `Server.startup` does).
  Break: tests/test_serving.py, every test: the limits and the slow head's timeout in
  test_a_head_over_its_limits_or_too_slow_is_refused_before_the_app (414, 431, 408).

Uvicorn's server: `RecyclingServer` subclasses `uvicorn.Server`.
- `on_tick(counter)`, which `main_loop` calls every 0.1 s and which ends the worker by
  returning True: recycling once the turns allow it, leaving after a reload once the new
  workers serve, and the request deadlines. Breaks: tests/test_serving.py, every test (no
  worker recycles or leaves after a reload, and a slow head gets no 408).
- `handle_exit(sig, frame)`, the handler of SIGTERM and SIGINT: a worker being replaced
  by a reload ignores its first SIGTERM. Breaks: tests/test_serving.py (the reload test
  sees the old workers stop before the new ones serve).
- `startup()` and `shutdown()` are extended (after the lifespan's startup: the heap's
  freeze, the turns' marker, the lifetime's start; taking the backlog);
  `started`, `should_exit`, `server_state.total_requests`, `server_state.connections`,
  `lifespan.state`, `config.backlog` and `config.ssl` are read. Break: tests/test_serving.py.

Gunicorn (the worker, and gunicorn.conf.py's hooks).
- `Arbiter.WORKERS` and `Arbiter.num_workers`, read by `on_reload` to list the workers a
  reload replaces. That hook runs before the new workers are forked, and
  `Arbiter.reload()` then waits up to `graceful_timeout` for the old ones instead of
  sending them a second SIGTERM (a second one makes a worker leave at once).
  Breaks: tests/test_serving.py (the reload test).
- `Arbiter.WORKER_BOOT_ERROR`, the exit code of a worker whose app did not start (the copy
  of `_serve`); the base worker's `cfg`, `sockets`, `wsgi` and `max_requests` (the limit
  with its jitter drawn). Break: tests/test_serving.py.

prometheus_client (metrics.py).
- A histogram's `_upper_bounds`, `_buckets` and `_sum`, written once for many
  observations (`Durations.observe_all`).
  Breaks: tests/test_metrics.py::test_many_observations_at_once_are_the_same_as_one_by_one.
- A summary's `_count` and `_sum`, written once for many sizes (`Sizes.observe_total`).
  Breaks: tests/test_metrics.py::test_sizes_and_the_fine_latency_are_written_a_moment_later.

FastAPI (metrics.py).
- The `effective_route_contexts()` of the routers `include_router` adds to `app.routes`,
  which list their routes with the prefix (`routes_of`, for the series made at 0 as a
  worker starts). A release that renames it leaves those routes' series to appear at their
  first answer, which `rate()` misses. Breaks:
  tests/test_metrics.py::test_every_handler_method_and_status_class_exists_at_zero_from_the_start.

Python's logging (logs.py).
- `logging._srcfile = None`, the logging HOWTO's own advice ("Optimization") to skip the
  lookup of each record's caller. Should it stop working, nothing breaks: records cost
  what they cost before.
"""
