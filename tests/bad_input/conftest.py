"""The bad-input corpus's fixtures (defined in corpus.py): the scripted CLI judge, the
adapters' process scorer, one run of the whole corpus per entry point and ``entry`` (the
importing module's ``ENTRY``, for the shared tests)."""

from bad_input.corpus import (  # noqa: F401  (fixtures, found by pytest by name)
    adapter_judge,
    entry,
    run_api_async,
    run_api_sync,
    run_cli_score_csv,
    run_cli_score_jsonl,
    run_eval_rb2,
    run_open_instruct,
    run_openrlhf,
    run_rerank,
    run_server_get_reward,
    run_server_score,
    run_trl,
    run_verl,
    scripted_cli,
)
