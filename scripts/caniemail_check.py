"""Which HTML and CSS features of our email caniemail lists as unsupported in the clients that matter.

    python scripts/caniemail_check.py                 # the demo issue, as a reader gets it
    python scripts/caniemail_check.py --html FILE     # any other email's HTML
    python scripts/caniemail_check.py --json          # the figures as JSON

caniemail (npm `caniemail` 2.0.2, caniemail.com's support tables and their own analyser, installed by
scripts/npm_package.py) is run on two documents: the final HTML of the demo issue (`digest demo` in a
temporary folder; the HTML part of the first .eml in its outbox), and a minimal MJML document compiled
the same way (mjml-python, `disable_comments`). A (feature, client) pair flagged "unsupported" for the
demo but not for the minimal document is an extra: something our templates add, not something plain
MJML output needs. Each extra must be in the allow-list of docs/email.md, which says why it degrades
well; any other is reported and the exit status is 1 (2: the check could not run).

Clients: Gmail (every app and webmail), Outlook for Windows, Apple Mail (macOS, iOS) and Yahoo (every
app and webmail): the big four of the issue (#17, point 6).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from npm_package import FetchError, package  # noqa: E402  (a sibling script, not an installed module)

ROOT = Path(__file__).resolve().parent.parent
ALLOW_LIST = ROOT / "docs" / "email.md"
CLIENTS = ["gmail.*", "outlook.windows", "apple-mail.*", "yahoo.*"]
MINIMAL_MJML = ("<mjml><mj-body><mj-section><mj-column><mj-text>Hello</mj-text></mj-column></mj-section>"
                "</mj-body></mjml>")

# caniemail's analyser on each document of a JSON object read from stdin; prints
# {document: {feature title: [client, ...]}} for the features it calls unsupported ("errors")
ANALYSE_JS = """
import { caniemail } from %s;
let input = '';
for await (const chunk of process.stdin) input += chunk;
const { clients, documents } = JSON.parse(input);
const out = {};
for (const [name, html] of Object.entries(documents)) {
  const found = {};
  for (const [client, issues] of caniemail({ clients, html }).issues.errors)
    for (const issue of issues) (found[issue.title] ??= new Set()).add(client);
  out[name] = Object.fromEntries(Object.entries(found).map(([t, s]) => [t, [...s].sort()]));
}
process.stdout.write(JSON.stringify(out));
"""


class CheckError(RuntimeError):
    """The check could not run (npm, node, the demo or the allow-list)."""


def minimal_html() -> str:
    from mjml import mjml2html  # the project's own compiler, as digest.render.compile_mjml calls it

    return str(mjml2html(MINIMAL_MJML, disable_comments=True))


def demo_html() -> str:
    """The HTML part a reader of the demo issue receives."""
    with tempfile.TemporaryDirectory(prefix="caniemail-demo-") as folder:
        done = subprocess.run([sys.executable, "-m", "digest", "demo", folder], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)
        if done.returncode != 0:
            raise CheckError(f"digest demo failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        emls = sorted((Path(folder) / "outbox").glob("*.eml"))
        if not emls:
            raise CheckError("digest demo wrote no .eml into its outbox")
        message = email.message_from_bytes(emls[0].read_bytes(), policy=email.policy.default)
        body = message.get_body(preferencelist=("html",))  # type: ignore[attr-defined]
        if body is None:
            raise CheckError(f"{emls[0].name} has no HTML part")
        return str(body.get_content())


def analyse(documents: dict[str, str], clients: list[str] = CLIENTS) -> dict[str, dict[str, list[str]]]:
    node = shutil.which("node")
    if node is None:
        raise CheckError("node is not installed (apt-get install nodejs npm)")
    entry = package("caniemail") / "dist" / "index.js"
    script = ANALYSE_JS % json.dumps(entry.as_uri())
    done = subprocess.run([node, "--input-type=module", "-e", script], input=json.dumps(
        {"clients": clients, "documents": documents}), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise CheckError(f"caniemail's analyser failed: {done.stderr.strip()[-500:]}")
    result: dict[str, dict[str, list[str]]] = json.loads(done.stdout)
    return result


def extras(found: dict[str, list[str]], baseline: dict[str, list[str]]) -> dict[str, list[str]]:
    """The (feature, client) pairs of `found` that `baseline` does not have, by feature."""
    out = {}
    for title, clients in found.items():
        more = sorted(set(clients) - set(baseline.get(title, [])))
        if more:
            out[title] = more
    return out


def allow_list(path: Path = ALLOW_LIST) -> set[str]:
    """The feature titles between the allow-list markers of docs/email.md: the first cell of each table
    row, in backticks."""
    text = path.read_text(encoding="utf-8")
    found = re.search(r"<!-- caniemail-allow-list:start -->(.*?)<!-- caniemail-allow-list:end -->", text, re.S)
    if found is None:
        raise CheckError(f"{path}: no caniemail allow-list (the markers caniemail-allow-list:start/end)")
    return set(re.findall(r"^\|\s*`([^`]+)`", found.group(1), re.M))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, help="check this HTML file instead of the demo issue")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    try:
        subject = args.html.read_text(encoding="utf-8") if args.html else demo_html()
        result = analyse({"email": subject, "minimal": minimal_html()})
        extra = extras(result["email"], result["minimal"])
        allowed = allow_list()
    except (CheckError, FetchError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bad = sorted(set(extra) - allowed)
    if args.json:
        print(json.dumps({"clients": CLIENTS, "email": result["email"], "minimal": result["minimal"],
                          "extra": extra, "not_allowed": bad}, indent=2))
    else:
        name = args.html or "the demo issue"
        print(f"caniemail, unsupported in {', '.join(CLIENTS)}:")
        print(f"  minimal MJML document: {len(result['minimal'])} features")
        print(f"  {name}: {len(result['email'])} features, {len(extra)} beyond plain MJML output")
        for title, clients in sorted(extra.items()):
            mark = "allowed" if title in allowed else "EXTRA  "
            print(f"    {mark} {title}: {', '.join(clients)}")
        if bad:
            print(f"{len(bad)} not in the allow-list of {ALLOW_LIST.relative_to(ROOT)}: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
