"""Retention: the hypertables' old chunks archived as Parquet, verified, and dropped whole (`cryptomon retention`).

`tables` says what is kept for how long, `policy` decides (pure), `archive` writes and verifies the files,
`loop` does the database work; why a chunk is never dropped while a writer could still add to it: `policy`.
"""
