"""A benchmark's table, printed in Markdown (README.md and BENCHMARKS.md quote them)."""


def print_markdown(header: tuple[str, ...], rows: list[tuple]) -> None:
  """One line per row; a cell of None prints as '-'."""
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for row in rows:
    print('| ' + ' | '.join('-' if cell is None else str(cell) for cell in row) + ' |')
