"""The README's two set-up commands are what CI runs and what a newcomer copies."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def bash_blocks(text: str) -> list[str]:
    blocks, inside, current = [], False, []
    for line in text.splitlines():
        if line.strip() == "```bash":
            inside, current = True, []
        elif line.strip() == "```" and inside:
            inside = False
            blocks.append("\n".join(current))
        elif inside:
            current.append(line)
    return blocks


def test_ci_runs_the_readme_test_command():
    readme = bash_blocks((REPO / "README.md").read_text())
    test_command = next(b for b in readme if b.rstrip().endswith("pytest"))
    assert test_command in (REPO / ".ci" / "run").read_text()


def test_readme_runs_the_example_pipeline_in_local_mode():
    readme = bash_blocks((REPO / "README.md").read_text())
    assert any(b.rstrip().endswith("refinery run examples/tiny-chat.yaml") and "torch==2.13.0" in b for b in readme)
    assert (REPO / "examples" / "tiny-chat.yaml").exists()
