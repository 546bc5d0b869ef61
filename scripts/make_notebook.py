"""Build an .ipynb from a compact text form: cells separated by lines '%% md', '%% code', '%% code chart'."""
import json, sys
src, dst = sys.argv[1], sys.argv[2]
cells = []
kind, tags, buf = None, [], []
def flush():
    if kind is None: return
    text = "\n".join(buf).strip("\n")
    lines = [l + "\n" for l in text.split("\n")]
    if lines: lines[-1] = lines[-1].rstrip("\n")
    if kind == "md":
        cells.append({"cell_type": "markdown", "id": f"cell-{len(cells)}", "metadata": {}, "source": lines})
    else:
        cells.append({"cell_type": "code", "id": f"cell-{len(cells)}", "metadata": {"tags": tags} if tags else {}, "source": lines, "outputs": [], "execution_count": None})
for line in open(src):
    line = line.rstrip("\n")
    if line.startswith("%% "):
        flush()
        parts = line[3:].split()
        kind, tags, buf = parts[0], parts[1:], []
    else:
        buf.append(line)
flush()
nb = {"cells": cells, "metadata": {"kernelspec": {"display_name": "Rust", "language": "rust", "name": "rust"},
      "language_info": {"codemirror_mode": "rust", "file_extension": ".rs", "mimetype": "text/rust", "name": "Rust", "pygment_lexer": "rust", "version": ""}},
      "nbformat": 4, "nbformat_minor": 5}
json.dump(nb, open(dst, "w"), indent=1, ensure_ascii=False)
print(f"{dst}: {len(cells)} cells")
