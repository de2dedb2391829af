"""``glasslm pipeline``: every stage, in order, from raw text to a chat model and a report.

``stage.py`` says what a stage is, ``stages.py`` holds the one table of them (order, config sections,
argv, inputs, outputs, file keys, preflight checks), ``run.py`` derives everything else from that
table and runs it, ``cli.py`` is the verb. Adding a stage is one entry in ``stages.STAGES`` plus the
stage's own module.

This file imports nothing: ``glasslm.clitools`` reads ``stages.RUN_SECTIONS`` without paying for the
runner's imports.
"""
