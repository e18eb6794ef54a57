#!/usr/bin/env python3
"""A stand-in for `claude -p` (Claude Code headless) that speaks its stream-json and edits
files in its working directory the way an agent would. Tests run it as the agent command.

It accepts the real CLI's flags: `-p/--print` with the prompt as an argument,
`--output-format stream-json` (the only format it speaks) with `--verbose` (refused without
it, as the real one does), `--max-turns`, `--model`, `--permission-mode`, `--resume ID`,
`--mcp-config FILE` (its servers' names are reported in the init line's `mcp_servers`),
`--allowedTools` and `--append-system-prompt` (ignored).

Output, one JSON object a line: a `system`/`init` line (a new `session_id` every run), an
`assistant` text line, then per action an `assistant` line with a `tool_use` block
(`Write`, `Edit` or `Bash`) and a `user` line with its `tool_result` block, a closing
`assistant` text line, and the `result` line with `usage`, `total_cost_usd`, `num_turns`
and `session_id`. A turn is the opening text plus one per action.

Transcripts are kept per working directory, like the real CLI's: under
`$FAKE_CLAUDE_HOME` (default `~/.fake-claude`), `projects/<cwd>/<session>.jsonl`.
`--resume ID` finds ID only there, from the same directory (otherwise it prints
`No conversation found with session ID: ID` to stderr and exits 1), and continues under a
new session id, as the real one may. Every run appends its pid to `$FAKE_CLAUDE_HOME/pids`.

Markers in the prompt choose what it does (the rest of the prompt is its "instruction"):

- none: append `- <instruction>` to `NOTES.md` (`Write` when new, `Edit` when there);
- `[edit PATH]`: append `fake-claude: <instruction>` to PATH (several allowed);
- `[bash COMMAND]`: run COMMAND with `sh -c` in the directory (a `Bash` tool use);
- `[noise]`: print a line that is not JSON before the init line;
- `[hang]`: print the init line, then sleep forever (and print nothing more);
- `[hang-once]`: as `[hang]` the first time in this `$FAKE_CLAUDE_HOME`, normal after;
- `[slow N]`: sleep N seconds before each line after the init line;
- `[fail]`: after the first text line, print `Error: ...` to stderr, a `result` of subtype
  `error_during_execution` with `is_error`, and exit 1;
- `[ignore-term]`: ignore SIGTERM (a child started after it ignores it too);
- `[child]`: start `sleep 3600` in the same process group; its pid goes to
  `$FAKE_CLAUDE_HOME/children`.

More actions than `--max-turns` allows end with a `result` of subtype `error_max_turns`
(exit 0, `is_error` false) after the actions that fit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

MARKER = re.compile(
    r"\[(edit|bash|noise|hang-once|hang|slow|fail|ignore-term|child)(?: ([^\]]*))?\]"
)
TOOLS = ["Task", "Bash", "Glob", "Grep", "LS", "Read", "Edit", "Write", "WebFetch", "TodoWrite"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="claude")
    parser.add_argument("prompt", nargs="?")
    parser.add_argument("-p", "--print", action="store_true")
    parser.add_argument("--output-format", default="text")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--max-turns", type=int)
    parser.add_argument("--model", default="claude-sonnet-4-20250514")
    parser.add_argument(
        "--permission-mode",
        default="default",
        choices=["default", "acceptEdits", "plan", "bypassPermissions"],
    )
    parser.add_argument("--resume", "-r")
    parser.add_argument("--mcp-config", action="append", default=[])
    parser.add_argument("--allowedTools")
    parser.add_argument("--append-system-prompt")
    return parser.parse_args(argv)


class Agent:
    def __init__(self, args: argparse.Namespace, home: Path, cwd: Path) -> None:
        self.args = args
        self.cwd = cwd
        self.session_id = str(uuid.uuid4())
        self.project = home / "projects" / re.sub(r"[^A-Za-z0-9]", "-", str(cwd))
        self.transcript = self.project / f"{self.session_id}.jsonl"
        self.delay = 0.0
        self.started = time.monotonic()
        self.turns = 0

    def emit(self, line: dict[str, Any]) -> None:
        if self.delay:
            time.sleep(self.delay)
        text = json.dumps(line)
        with self.transcript.open("a") as f:
            f.write(text + "\n")
        print(text, flush=True)

    def say(self, text: str) -> None:
        self.message("assistant", [{"type": "text", "text": text}])

    def message(self, role: str, content: list[dict[str, Any]]) -> None:
        body: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant":
            body |= {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message"}
            body |= {"model": self.args.model, "stop_reason": None}
        self.emit(
            {
                "type": role,
                "message": body,
                "parent_tool_use_id": None,
                "session_id": self.session_id,
                "uuid": str(uuid.uuid4()),
            }
        )

    def tool(self, name: str, tool_input: dict[str, Any], run: Any) -> None:
        tool_id = f"toolu_{uuid.uuid4().hex[:24]}"
        self.message(
            "assistant", [{"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}]
        )
        content, is_error = run()
        block = {"type": "tool_result", "tool_use_id": tool_id, "content": content}
        self.message("user", [block | ({"is_error": True} if is_error else {})])
        self.turns += 1

    def append(self, path: Path, line: str) -> None:
        old = path.read_text() if path.exists() else ""
        if not old:

            def write() -> tuple[str, bool]:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(line + "\n")
                return f"File created successfully at: {path}", False

            self.tool("Write", {"file_path": str(path), "content": line + "\n"}, write)
            return
        last = old.rstrip("\n").rsplit("\n", 1)[-1]

        def edit() -> tuple[str, bool]:
            path.write_text(old + ("" if old.endswith("\n") else "\n") + line + "\n")
            return f"The file {path} has been updated.", False

        self.tool(
            "Edit",
            {"file_path": str(path), "old_string": last, "new_string": f"{last}\n{line}"},
            edit,
        )

    def bash(self, command: str) -> None:
        def run() -> tuple[str, bool]:
            done = subprocess.run(
                ["sh", "-c", command], cwd=self.cwd, capture_output=True, text=True, check=False
            )
            return (done.stdout + done.stderr).strip(), done.returncode != 0

        self.tool("Bash", {"command": command, "description": "Run a command"}, run)

    def result(self, subtype: str, is_error: bool, text: str | None) -> None:
        turns = max(self.turns, 1)
        tokens_in, tokens_out = 12 * turns + len(self.args.prompt) // 4, 30 * turns
        usage: dict[str, Any] = {
            "input_tokens": tokens_in,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 50 * (turns - 1),
            "output_tokens": tokens_out,
            "server_tool_use": {"web_search_requests": 0},
            "service_tier": "standard",
        }
        cost = 3e-6 * tokens_in + 15e-6 * tokens_out
        elapsed = int((time.monotonic() - self.started) * 1000)
        line: dict[str, Any] = {
            "type": "result",
            "subtype": subtype,
            "is_error": is_error,
            "duration_ms": elapsed,
            "duration_api_ms": elapsed,
            "num_turns": turns,
            "session_id": self.session_id,
            "total_cost_usd": round(cost, 6),
            "usage": usage,
            "permission_denials": [],
            "uuid": str(uuid.uuid4()),
        }
        if text is not None:
            line["result"] = text
        self.emit(line)


def mcp_servers(files: list[str]) -> list[dict[str, str]]:
    names: list[str] = []
    for name in files:
        names += json.loads(Path(name).read_text()).get("mcpServers", {})
    return [{"name": n, "status": "connected"} for n in names]


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.prompt is None:
        args.prompt = sys.stdin.read()
    if not args.print or not args.prompt.strip():
        print("Error: Input must be provided through -p with a prompt", file=sys.stderr)
        return 1
    if args.output_format != "stream-json":
        print("fake-claude speaks --output-format stream-json only", file=sys.stderr)
        return 2
    if not args.verbose:
        print(
            "Error: When using --print, --output-format=stream-json requires --verbose",
            file=sys.stderr,
        )
        return 1
    home = Path(os.environ.get("FAKE_CLAUDE_HOME") or Path.home() / ".fake-claude")
    home.mkdir(parents=True, exist_ok=True)
    with (home / "pids").open("a") as f:
        f.write(f"{os.getpid()}\n")
    agent = Agent(args, home, Path.cwd())
    agent.project.mkdir(parents=True, exist_ok=True)
    earlier = 0
    if args.resume:
        previous = agent.project / f"{args.resume}.jsonl"
        if not previous.exists():
            print(f"No conversation found with session ID: {args.resume}", file=sys.stderr)
            return 1
        shutil.copyfile(previous, agent.transcript)
        earlier = sum(1 for _ in previous.open())

    markers = [(m[1], (m[2] or "").strip()) for m in MARKER.finditer(args.prompt)]
    names = {name for name, _ in markers}
    instruction = " ".join(MARKER.sub(" ", args.prompt).split())[:200] or "(no words)"
    if "ignore-term" in names:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "child" in names:
        child = subprocess.Popen(["sleep", "3600"])
        with (home / "children").open("a") as f:
            f.write(f"{child.pid}\n")
    if "noise" in names:
        print("fake-claude: warming up (this line is not JSON)", flush=True)
    agent.emit(
        {
            "type": "system",
            "subtype": "init",
            "cwd": str(agent.cwd),
            "session_id": agent.session_id,
            "tools": TOOLS,
            "mcp_servers": mcp_servers(args.mcp_config),
            "model": args.model,
            "permissionMode": args.permission_mode,
            "slash_commands": [],
            "apiKeySource": "none",
            "uuid": str(uuid.uuid4()),
        }
    )
    once = home / "hung-once"
    if "hang" in names or ("hang-once" in names and not once.exists()):
        once.touch()
        while True:
            time.sleep(3600)
    agent.delay = next((float(v) for name, v in markers if name == "slow"), 0.0)

    opening = f"I'll work on: {instruction}"
    agent.say(opening + (f" (resuming {args.resume}, {earlier} lines before)" if earlier else ""))
    agent.turns = 1
    if "fail" in names:
        print("Error: fake failure during execution", file=sys.stderr, flush=True)
        agent.result("error_during_execution", True, None)
        return 1
    actions = [(n, v) for n, v in markers if n in ("edit", "bash")] or [("notes", "NOTES.md")]
    for name, value in actions:
        if args.max_turns is not None and agent.turns >= args.max_turns:
            agent.result("error_max_turns", False, None)
            return 0
        if name == "bash":
            agent.bash(value)
        else:
            line = f"- {instruction}" if name == "notes" else f"fake-claude: {instruction}"
            agent.append(agent.cwd / value, line)
    done = f"Done: {instruction}"
    agent.say(done)
    agent.result("success", False, done)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
