#!/usr/bin/env python3
"""Scripted mutations of photogate's central claims: does each break make its tests fail?

Each mutation is one or more line-level edits ``(file, old, new)`` of the product code. It
is applied to a scratch copy of the tree (``src/``, ``strategies/``, ``tests/``, ``bench/``,
``bin/``, ``config.yaml``, ``setup.cfg``, ``pyproject.toml``), never to the tree itself, and the
tests named for it run there with ``PYTHONPATH`` pointing at the copy (so the copy's code runs,
not the editable install; the gateway and node processes the tests start inherit it). A
mutation is *caught* when pytest reports failed tests (exit status 1); a clean pass, a
collection error or a timeout is not.

Before anything runs, every ``old`` snippet must occur exactly once in its file: when the code
moves, this script stops with the mutation and snippet to update. Then a canary proves the copy
is what runs: the copy's ``photogate/__init__.py`` is broken on purpose and one named test must
fail on it.

    .venv/bin/python bench/mutations.py              # all, 2 at a time; exit 1 if any is not caught
    .venv/bin/python bench/mutations.py -k wechat    # those whose name contains "wechat"
    .venv/bin/python bench/mutations.py --list       # names, claims and tests
    .venv/bin/python bench/mutations.py --baseline   # the named tests on an unmutated copy (all pass)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("src", "strategies", "tests", "bench", "bin", "config.yaml", "setup.cfg", "pyproject.toml")
#: Any quick test that imports photogate: run on a copy broken on purpose.
CANARY_TEST = "tests/test_balancing.py::test_round_robin_cycles_in_id_order_and_skips_missing_nodes"
#: Per pytest run; pytest-timeout (setup.cfg) stops a single test at 120 s before this.
RUN_TIMEOUT = 240.0

DISPATCHER = "src/photogate/dispatch/dispatcher.py"
QUEUE = "src/photogate/dispatch/queue.py"
NODECLIENT = "src/photogate/dispatch/nodeclient.py"
IMAGECHECK = "src/photogate/imagecheck.py"
BODIES = "src/photogate/bodies.py"
PAY = "src/photogate/wechat/pay.py"
SEC = "tests/security/"
WX = "tests/wechat/"


@dataclass(frozen=True)
class Mutation:
    name: str
    claim: str
    edits: tuple[tuple[str, str, str], ...]
    tests: tuple[str, ...]


def m(name: str, claim: str, edits: list[tuple[str, str, str]], *tests: str) -> Mutation:
    return Mutation(name, claim, tuple(edits), tests)


MUTATIONS: list[Mutation] = [
    # -- the central claims -------------------------------------------------------------------
    m("durability-task-record", "an accepted task is on disk before its id is answered (SIGKILL)",
      [("src/photogate/storage/sqlite/store.py", "task = await self._write(self._insert_sync, task)",
        "task = task() if callable(task) else task")],
      "tests/test_process.py::test_kill_and_restart_mid_run_loses_nothing"),
    m("durability-recover-processing", "tasks processing at a kill run again after the restart",
      [(QUEUE, "tasks = await self.store.list_tasks([TaskStatus.QUEUED, TaskStatus.PROCESSING])",
        "tasks = await self.store.list_tasks([TaskStatus.QUEUED])")],
      "tests/test_process.py::test_kill_and_restart_mid_run_loses_nothing"),
    m("durability-power-cut-sqlite", "every commit is synced (a power cut loses no accepted task)",
      [("src/photogate/storage/sqlite/store.py", 'conn.execute("PRAGMA synchronous=FULL")', 'conn.execute("PRAGMA synchronous=NORMAL")')],
      "tests/security/test_sec_durability.py::test_the_task_store_syncs_every_commit"),
    m("durability-power-cut-rename", "a published photo's rename is synced (its directory fsynced)",
      [("src/photogate/blobs.py", "        _sync_directory(self.path)  # the rename itself survives a power cut\n", "")],
      "tests/security/test_sec_durability.py::test_a_published_photo_and_its_rename_are_synced"),
    m("failover", "a node's failure requeues the task for another node",
      [(DISPATCHER, "if task.attempts >= self.config.max_attempts:", "if True:")],
      "tests/test_tasks.py::test_node_5xx_retries_elsewhere_and_4xx_fails_at_once"),
    m("failover-exclusion", "a retried task avoids the node that failed it",
      [(DISPATCHER, "item.tried.add(server_id)", "pass")],
      SEC + "test_sec_node_answers.py::test_a_retry_avoids_the_node_that_failed_it_even_when_the_strategy_prefers_it"),
    m("passive-health", "a failed dispatch counts against the node at once",
      [(DISPATCHER, "if exc.counts:", "if False:")],
      SEC + "test_sec_node_answers.py::test_valid_png_followed_by_junk_is_the_nodes_failure"),
    m("own-pixel-limit", "photogate's own limits.max_pixels, below Pillow's",
      [(IMAGECHECK, "if width * height > max_pixels:", "if False:")],
      "tests/test_own_limits.py::test_a_small_configured_pixel_limit_is_photogates_own"),
    m("own-side-limit", "limits.max_side refuses a long strip",
      [(IMAGECHECK, "if max_side is not None and max(width, height) > max_side:", "if False:")],
      "tests/test_own_limits.py::test_the_longest_side_limit_refuses_a_strip"),
    m("wechat-signature", "a WeChat Pay signature that does not verify is refused",
      [(PAY, "if not verify(key, message, signature):", "if False:")],
      WX + "test_wechat_pay_client.py::test_keyring_checks_window_serial_and_probe"),
    m("wechat-signature-notify", "a payment notification whose signature does not verify credits nothing",
      [(PAY, "if not verify(key, message, signature):", "if False:")],
      WX + "test_wechat_flow.py::test_bad_notifications_rejected_and_credited_once"),
    m("wechat-serial-compare", "certificate serials compare by value (a leading zero)",
      [(PAY, 'return format(int(text, 16), "X") if _HEX.fullmatch(text) else text', "return text")],
      WX + "test_wechat_pay_client.py::test_certificate_serial_keeps_its_leading_zero"),
    m("wechat-serial-format", "a certificate's serial keeps its leading zero",
      [(PAY, 'return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big").hex().upper()',
        'return format(n, "X")'),
       (PAY, 'return format(int(text, 16), "X") if _HEX.fullmatch(text) else text', "return text")],
      WX + "test_wechat_pay_client.py::test_certificate_serial_keeps_its_leading_zero"),
    m("round-robin-choice", "round_robin moves on to the next node",
      [("src/photogate/balancing.py", "self._last = chosen.server_id", "self._last = None")],
      "tests/test_balancing.py::test_round_robin_cycles_in_id_order_and_skips_missing_nodes"),
    m("round-robin-dispatch", "round_robin spreads a gateway's jobs 10/10/10 over three nodes",
      [("src/photogate/balancing.py", "self._last = chosen.server_id", "self._last = None")],
      "tests/test_tasks.py::test_round_robin_sequential_30_tasks_split_10_10_10"),
    m("strategy-swap-api", "a strategy swapped by the admin API places the next jobs",
      [("src/photogate/runtime.py", "self.strategy = strategy", "pass")],
      "tests/test_balancing.py::test_a_swap_changes_where_the_next_jobs_go"),
    m("strategy-swap-dashboard", "a strategy swapped on the dashboard places the next jobs",
      [("src/photogate/runtime.py", "self.strategy = strategy", "pass")],
      "tests/test_ui.py::test_a_dashboard_swap_changes_where_the_next_jobs_go"),
    # -- the hardening of issue 13 ------------------------------------------------------------
    m("i13-json-depth", "JSON nesting is bounded (32) before json.loads recurses",
      [(BODIES, "    _check_depth(raw)\n", "")],
      SEC + "test_sec_input.py::test_deeply_nested_json_is_a_400_on_every_json_route"),
    m("i13-ascii-ints", "numbers from clients are ASCII digits only",
      [("src/photogate/fields.py", 'elif isinstance(value, str) and _INTEGER.fullmatch(value.strip(" \\t")):',
        'elif isinstance(value, str) and value.strip(" \\t").isdigit():')],
      SEC + "test_sec_input.py::test_unicode_digits_are_a_400_naming_the_field"),
    m("i13-protocol-errors-json", "aiohttp's own parse errors are answered as JSON",
      [("src/photogate/protocol_errors.py", "app[JSON_PROTOCOL_ERRORS] = True", "app[JSON_PROTOCOL_ERRORS] = False")],
      SEC + "test_sec_input.py::test_aiohttp_parse_errors_are_json_4xx"),
    m("i13-check-memory-budget", "image checks wait for room in the memory budget",
      [("src/photogate/imagechecker.py", "if not self._waiters and cost <= self.free:", "if True:")],
      SEC + "test_sec_imagecheck.py::test_budget_serves_in_arrival_order_and_survives_cancellation"),
    m("i13-png-chunk-walk", "a PNG of too many chunks is refused after a bounded walk",
      [(IMAGECHECK, "segments.check_png(fh)", "pass")],
      SEC + "test_sec_cpu_bombs.py::test_cpu_bombs_are_refused_with_a_reason"),
    m("i13-jpeg-segment-walk", "a JPEG of too many segments is refused after a bounded walk",
      [(IMAGECHECK, "segments.check_jpeg(fh)", "pass")],
      SEC + "test_sec_cpu_bombs.py::test_cpu_bombs_are_refused_with_a_reason"),
    m("i13-bmp-rle", "RLE-compressed BMP is refused (415)",
      [(IMAGECHECK, 'if fmt == "BMP" and im.info.get("compression") in (BMP_RLE8, BMP_RLE4):', "if False:")],
      SEC + "test_sec_cpu_bombs.py::test_cpu_bombs_are_refused_with_a_reason"),
    m("i13-body-read-deadline", "each read of a body waits at most limits.read_timeout (408)",
      [(BODIES, "async with _timeout(max(min(self.read_timeout, left), 0.001)):",
        "async with _timeout(max(min(self.read_timeout * 10, left), 0.001)):")],
      SEC + "test_sec_input.py::test_a_stalled_body_is_answered_408_and_its_connection_closed"),
    m("i13-stalled-body-close", "a stalled body gets 408 and its connection closed at once",
      [("src/photogate/errors.py", "            protocol.force_close()", "            pass")],
      SEC + "test_sec_input.py::test_a_stalled_body_is_answered_408_and_its_connection_closed"),
    m("i13-split-body", "a JSON body in two TCP segments is read whole",
      [(BODIES, '        chunks.append(chunk)\n    return b"".join(chunks)',
        '        chunks.append(chunk)\n        break\n    return b"".join(chunks)')],
      SEC + "test_sec_input.py::test_json_bodies_split_into_two_segments_are_read_whole"),
    m("i13-split-form-field", "a multipart form field in two TCP segments is read whole",
      [(BODIES, '            chunks.append(chunk)\n        return b"".join(chunks).decode',
        '            chunks.append(chunk)\n            break\n        return b"".join(chunks).decode')],
      SEC + "test_sec_input.py::test_a_form_field_split_across_segments_is_read_whole"),
    m("i13-multipart-field-budget", "an upload carries at most 32 form fields",
      [(BODIES, "if self.parts > MAX_FORM_FIELDS + 1:", "if False:")],
      SEC + "test_sec_input.py::test_multipart_fields_are_counted_against_a_budget"),
    m("i13-loopback-outside-dev", "loopback nodes are refused outside --dev",
      [("src/photogate/allowlist.py", "if dev or _listed_explicitly(address, allowed):", "if True:")],
      SEC + "test_sec_node_identity.py::test_loopback_refused_outside_dev_with_the_default_networks"),
    m("i13-embedded-ipv4", "an IPv4 address written inside IPv6 is judged as that IPv4",
      [("src/photogate/allowlist.py", "address = effective(given)", "address = canonical(ip)")],
      SEC + "test_sec_node_identity.py::test_embedded_and_special_addresses_always_refused"),
    m("i13-identity-keyless-takeover", "a keyless registration never gets a keyed node's id or token",
      [("src/photogate/identity.py", "    if at_address.node_key:\n", "    if False:\n")],
      SEC + "test_sec_node_identity.py::test_keyless_registration_of_a_keyed_node_gets_409_not_its_token"),
    m("i13-identity-token-rotation", "a keyless re-registration gets a new token, never the old one",
      [("src/photogate/identity.py", "rotate_token=True, attach_key=node_key or None",
        "rotate_token=False, attach_key=node_key or None")],
      SEC + "test_sec_node_identity.py::test_keyless_reregistration_keeps_the_id_and_rotates_the_token"),
    m("i13-unregister-needs-key", "the secret alone cannot unregister a keyed node",
      [("src/photogate/webhook.py", "if state.record.node_key and not same_secret(",
        "if False and not same_secret(")],
      SEC + "test_sec_node_identity.py::test_the_secret_alone_cannot_unregister_a_keyed_node"),
    m("i13-credential-bucket", "every failed credential spends from one bucket per client",
      [("src/photogate/netutil.py", "request[CREDENTIAL_REFUSED] = True", "pass")],
      SEC + "test_sec_misc.py::test_dashboard_and_admin_failures_share_one_bucket"),
    m("i13-logout-revokes", "logging out revokes the dashboard cookie",
      [("src/photogate/ui.py", "        request.app[REVOKED].revoke(cookie)\n", "        pass\n")],
      SEC + "test_sec_misc.py::test_logout_revokes_the_cookie"),
    m("i13-public-config", "GET /api/v1/config shows clients only what they need",
      [("src/photogate/admin_api.py", "data = gw.config.client_dict()", "data = gw.config.public_dict()")],
      SEC + "test_sec_misc.py::test_public_config_shows_no_operator_details"),
    m("i13-gpunode-secret-file", "gpunode reads its secret from --secret-file",
      [("src/gpunode/cli.py", 'secret = secret_file.read_text(encoding="utf-8").strip()',
        "secret = str(args.env_secret)")],
      "tests/node/test_gpunode_secret_file.py::test_gpunode_secret_from_a_file"),
    m("i13-disk-full-503", "a full disk (ENOSPC) is a 503 with Retry-After, never a 500",
      [("src/photogate/errors.py", "return exc.errno in (errno.ENOSPC, errno.EDQUOT)", "return False")],
      SEC + "test_sec_misc.py::test_upload_on_a_full_disk_answers_clearly_and_leaves_no_part"),
    m("i13-database-full-503", "a full database is a 503 with Retry-After, never a 500",
      [("src/photogate/errors.py", 'return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)',
        "return False")],
      SEC + "test_sec_misc.py::test_register_on_a_full_database_is_503_and_writes_nothing"),
    m("i13-refund-clawback-sqlite", "a refund takes the order's credits back (SQLite)",
      [("src/photogate/wechat/records/sqlite.py",
        "taken = min(int(row[0]) if row else 0, order.credits)", "taken = 0")],
      WX + "test_wechat_refund_sec.py::test_console_refund_takes_the_credits_back_once"),
    m("i13-refund-clawback-redis", "a refund takes the order's credits back (Redis)",
      [("src/photogate/wechat/records/refund_succeeded.lua",
        "taken = math.min(tonumber(redis.call('HGET', user, 'credits') or '0'), credits)", "taken = 0")],
      WX + "test_wechat_refund_sec.py::test_console_refund_takes_the_credits_back_once"),
    m("i13-node-error-cap", "a node's error text is read up to 4 KB",
      [("src/photogate/nodeio.py", "body, complete = await read_capped(resp, ERROR_BYTES)",
        "body, complete = await resp.read(), True")],
      SEC + "test_sec_node_answers.py::test_huge_error_body_is_read_up_to_a_few_kb"),
    m("i13-node-result-cap", "a node's result is read up to its bound while it streams",
      [("src/photogate/nodeio.py", "        if received > bound:", "        if False:")],
      SEC + "test_sec_node_answers.py::test_valid_png_followed_by_junk_is_the_nodes_failure"),
    m("i13-node-result-declared", "a result declared over its bound is refused before reading",
      [("src/photogate/nodeio.py", "    if declared is not None and declared > bound:", "    if False:")],
      SEC + "test_sec_node_answers.py::test_declared_oversized_result_is_refused_before_reading"),
    m("i13-node-health-cap", "a node's /health answer is read up to 64 KiB",
      [("src/photogate/nodeio.py", "body, complete = await read_capped(resp, limit)",
        "body, complete = await resp.read(), True")],
      SEC + "test_sec_node_answers.py::test_huge_health_answer_is_a_failed_check"),
    m("i13-busy-no-attempt", "a node's 503 busy spends no attempt",
      [(NODECLIENT, "if resp.status in (429, 503):", "if False:")],
      SEC + "test_sec_node_answers.py::test_busy_node_spends_no_attempt_and_gets_no_work_until_free"),
    m("i13-retry-wakeup", "a retried task is woken when its backoff ends (re-armed after an early timer)",
      [(QUEUE, "TIMER_SLACK = 0.002", "TIMER_SLACK = -0.001"),
       (QUEUE, "        self._timer = None\n        self._wake()", "        self._wake()")],
      SEC + "test_sec_node_answers.py::test_retry_wakes_on_time_in_the_gateway_process"),
    m("i13-gpunode-header-limits", "gpunode checks output limits before inference",
      [("src/gpunode/inference.py", "imaging.check_output(fmt or imaging.default_format(",
        "(fmt or imaging.default_format("),
       ("src/gpunode/inference.py", "imaging.check_output(fmt, *tiling.output_size((in_w, in_h), scale))",
        "(fmt, *tiling.output_size((in_w, in_h), scale))")],
      "tests/node/test_gpunode_limits_sec.py::test_webp_side_limit_refused_from_the_header_before_inference"),
    m("i13-cmyk-icc", "a CMYK profile never stays on an RGB result",
      [("src/gpunode/imaging.py", "    if _profile_space(icc) != _PROFILE_SPACE[gray]:\n", "    if False:\n")],
      "tests/node/test_gpunode_limits_sec.py::test_cmyk_jpeg_converted_through_its_profile_and_not_tagged_cmyk"),
]


@dataclass
class Outcome:
    mutation: Mutation
    caught: bool
    verdict: str  # "yes", "NO", "ERROR", "TIMEOUT"
    detail: str
    seconds: float


def check_snippets(mutations: list[Mutation], root: Path = ROOT) -> list[str]:
    """Every ``old`` must occur exactly once in its file (applied in order); the problems found."""
    problems = []
    for mut in mutations:
        texts: dict[str, str] = {}
        for rel, old, new in mut.edits:
            path = root / rel
            if rel not in texts:
                if not path.is_file():
                    problems.append(f"{mut.name}: {rel} does not exist")
                    continue
                texts[rel] = path.read_text(encoding="utf-8")
            count = texts[rel].count(old)
            if count != 1:
                problems.append(f"{mut.name}: {rel}: snippet found {count} times (must be once): {old!r}")
                continue
            texts[rel] = texts[rel].replace(old, new)
        for rel, text in texts.items():
            if rel.endswith(".py"):
                try:
                    compile(text, rel, "exec")
                except SyntaxError as exc:
                    problems.append(f"{mut.name}: {rel}: the mutated file does not compile: {exc}")
        for test in mut.tests:
            if not (root / test.split("::")[0]).is_file():
                problems.append(f"{mut.name}: no test file {test.split('::')[0]}")
            if Path(test.split("::")[0]).name == "test_mutations.py":
                problems.append(f"{mut.name}: {test} would run this script inside itself")
    return problems


def make_copy(dest: Path) -> Path:
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns(".pytest_cache", "*.egg-info", ".hypothesis")
    for item in COPIED:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / item)
    return dest


def apply(copy: Path, edits: tuple[tuple[str, str, str], ...]) -> None:
    for rel, old, new in edits:
        path = copy / rel
        text = path.read_text(encoding="utf-8")
        assert text.count(old) == 1, (rel, old)
        path.write_text(text.replace(old, new), encoding="utf-8")


def copy_env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The copy's packages (photogate, gpunode; strategies at its root) before the editable
    # install's finder, which only answers for what the path did not find.
    env["PYTHONPATH"] = os.pathsep.join([str(copy / "src"), str(copy)])
    env.pop("PYTEST_ADDOPTS", None)
    env["COLUMNS"] = "400"  # the short summary's failure messages, not cut at 80 columns
    return env


def run_pytest(copy: Path, tests: tuple[str, ...], timeout: float = RUN_TIMEOUT) -> tuple[int | None, str]:
    argv = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
            "--basetemp", str(copy / ".pytest-tmp"), *tests]
    # A session of its own: on a timeout, pytest and the gateways and nodes it started go together.
    proc = subprocess.Popen(argv, cwd=copy, env=copy_env(copy), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out
    return proc.returncode, out


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        found = re.match(r"(?:FAILED|ERROR) (\S+::\S+)(?: - (.*))?", line)
        if found:
            test = found.group(1).rsplit("::", 1)[-1]
            return f"{test}: {found.group(2)}" if found.group(2) else test
    return ""


def _summary(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else "(no output)"


def run_one(mut: Mutation, scratch: Path, *, mutate: bool = True) -> Outcome:
    start = time.monotonic()
    copy = make_copy(scratch / mut.name)
    try:
        if mutate:
            apply(copy, mut.edits)
        code, output = run_pytest(copy, mut.tests)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    seconds = time.monotonic() - start
    failed = re.search(r"\b\d+ failed\b", _summary(output)) is not None
    if code is None:
        return Outcome(mut, False, "TIMEOUT", f"no result within {RUN_TIMEOUT:g} s", seconds)
    if code == 1 and failed:
        return Outcome(mut, True, "yes", _first_failure(output), seconds)
    if code == 0:
        if "passed" not in _summary(output):  # all skipped (no redis-server?): nothing was checked
            return Outcome(mut, False, "SKIPPED", _summary(output), seconds)
        return Outcome(mut, False, "passed" if not mutate else "NO", _summary(output), seconds)
    return Outcome(mut, False, "ERROR", f"pytest exit {code}: {_summary(output)}", seconds)


def canary(scratch: Path) -> str | None:
    """Prove that the copy's code is what runs: break the copy, expect that breakage."""
    copy = make_copy(scratch / "canary")
    try:
        init = copy / "src" / "photogate" / "__init__.py"
        init.write_text('raise ImportError("mutations.py canary: the scratch copy is what runs")\n'
                        + init.read_text(encoding="utf-8"), encoding="utf-8")
        code, output = run_pytest(copy, (CANARY_TEST,), timeout=120)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    if code == 0 or "mutations.py canary" not in output:
        return f"the canary did not fail (exit {code}): the tests do not run the copy's code\n{output[-2000:]}"
    return None


def table(outcomes: list[Outcome]) -> str:
    """A markdown table (mutation, tests, caught, seconds), then each run's first failure."""
    lines = ["| mutation | tests | caught | seconds |", "| --- | --- | --- | ---: |"]
    for o in outcomes:
        tests = ", ".join(f"`{t.split('/')[-1]}`" for t in o.mutation.tests)
        lines.append(f"| {o.mutation.name} | {tests} | {o.verdict} | {o.seconds:.1f} |")
    lines.append("")
    lines += [f"{o.mutation.name}: {o.detail[:300]}" for o in outcomes]
    return "\n".join(lines)


def select(names: list[str] | None) -> list[Mutation]:
    if not names:
        return list(MUTATIONS)
    return [mut for mut in MUTATIONS if any(n in mut.name for n in names)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", dest="names", action="append", help="only mutations whose name contains this")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="mutations run at once (default 2)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--baseline", action="store_true",
                        help="run each mutation's tests on an unmutated copy instead (they must all pass)")
    args = parser.parse_args(argv)
    chosen = select(args.names)
    if not chosen:
        print("no mutation matches", file=sys.stderr)
        return 2
    if args.list:
        for mut in chosen:
            print(f"{mut.name}: {mut.claim}")
            for rel, old, _ in mut.edits:
                print(f"    edit {rel}: {old.strip()[:90]}")
            for test in mut.tests:
                print(f"    test {test}")
        return 0
    problems = check_snippets(chosen)
    if problems:
        print("the code moved; update these mutations:", *problems, sep="\n  ", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="photogate-mutations-") as tmp:
        scratch = Path(tmp)
        problem = canary(scratch)
        if problem:
            print(problem, file=sys.stderr)
            return 2
        print(f"canary ok: the tests run the scratch copy's code; {len(chosen)} mutations, {args.jobs} at a time",
              flush=True)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(run_one, mut, scratch, mutate=not args.baseline) for mut in chosen]
            outcomes = []
            for future in futures:
                outcome = future.result()
                outcomes.append(outcome)
                print(f"  {outcome.mutation.name}: {outcome.verdict} ({outcome.seconds:.1f} s)", flush=True)
    print()
    print(table(outcomes))
    total = time.monotonic() - started
    if args.baseline:
        bad = [o for o in outcomes if o.verdict != "passed"]
        print(f"\nbaseline: {len(outcomes) - len(bad)}/{len(outcomes)} unmutated runs passed in {total:.0f} s")
        return 1 if bad else 0
    missed = [o for o in outcomes if not o.caught]
    print(f"\n{len(outcomes) - len(missed)}/{len(outcomes)} mutations caught in {total:.0f} s"
          + (f"; NOT caught: {', '.join(o.mutation.name for o in missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
