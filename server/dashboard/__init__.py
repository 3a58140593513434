"""The coordinator's live dashboard: a read-only web page over a run folder and its federation.

``fl-server start --dashboard [HOST:]PORT`` serves it while a run goes on, ``fl-server dashboard --run-dir``
for a finished run or a simulation's run folder. Starlette and uvicorn (which Flower brings) serve it;
every script and style ships in ``static/``.
"""
