"""Names of the files a run folder holds, importable without torch (for fast CLI errors and reports)."""

RESULTS_FILE = "results.json"  # server.run_results: per-round figures, ε, failures
RESULTS_FORMAT = "fedshield-results"
PREDICTIONS_FILE = "predictions.npz"  # server.central_evaluation: the central test set's predictions
