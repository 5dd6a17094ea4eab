"""Replaces the generated settings tables of a Markdown page (between the settings-reference
markers) with the text of a file: `make docs` writes what `blipserve settings-reference` prints."""
import sys

page, generated = sys.argv[1], sys.argv[2]
begin, end = "<!-- settings-reference: begin -->", "<!-- settings-reference: end -->"
text = open(page, encoding="utf-8").read()
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
body = open(generated, encoding="utf-8").read().strip()
open(page, "w", encoding="utf-8").write(f"{head}{begin}\n{body}\n{end}{tail}")
