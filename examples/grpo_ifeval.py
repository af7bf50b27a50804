"""GRPO on IFEval-style prompts with a FLIP reward, then an IFEval check of the trained policy.

The policy is trained with TRL's ``GRPOTrainer`` on prompts in the IFEval format (``prompt``,
``instruction_id_list``, ``kwargs``; one JSON object per line). The reward is fliprm's RL
default (``fliprm.integrations.trl.get_flip_reward()``: the ``rl`` preset), or, as the
baseline, the paper's pointwise 1-10 judge (``--reward pointwise``). With ``--eval``, each
prompt then gets one greedy answer from the policy, checked by the IFEval verifiers
(``fliprm.verifiers.verify``): prompt- and instruction-level accuracy, strict and loose.

On a GPU, with a hub model and a served judge::

    fliprm serve --port 8080 &                       # the FLIP judge, once
    python examples/grpo_ifeval.py --model Qwen/Qwen2.5-0.5B-Instruct \\
        --prompts ifeval.jsonl --judge-url http://127.0.0.1:8080 --max-steps 200 --eval
    # the baseline: the pointwise judge on an OpenAI-compatible server (vLLM, llama-server)
    python examples/grpo_ifeval.py --model Qwen/Qwen2.5-0.5B-Instruct --reward pointwise \\
        --judge-backend openai:Qwen/Qwen3-1.7B --judge-base-url http://127.0.0.1:8000/v1 --eval

Without ``--judge-url`` the judge runs in the training process (``--judge-backend``, default
the embedded CPU model). Only a 2-step CPU smoke run with a tiny random model and the fake
judge has been run (tests/integrations/test_grpo_ifeval_example.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data" / "ifeval_tiny.jsonl"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="policy: a hub id or a local checkpoint")
    p.add_argument("--prompts", type=Path, default=DATA, help="IFEval-format JSONL")
    p.add_argument("--output-dir", type=Path, default=Path("grpo_ifeval_out"))
    p.add_argument("--reward", choices=("flip", "pointwise"), default="flip",
                   help="flip: fliprm's RL default; pointwise: the 1-10 judge baseline")
    p.add_argument("--judge-url", help="a `fliprm serve` for the FLIP reward, e.g. "
                   "http://127.0.0.1:8080 (default: the judge runs in this process)")
    p.add_argument("--judge-backend", default="embedded",
                   help="in-process judge: embedded, gguf:PATH, openai[:MODEL] or fake")
    p.add_argument("--judge-base-url", help="URL of an openai judge backend, ending in /v1")
    p.add_argument("--method", choices=("pmi", "likelihood", "f1"),
                   help="FLIP method of an in-process judge (default: the rl preset's); "
                   "a fliprm serve uses its own --method")
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8, help="per device, in completions")
    p.add_argument("--max-completion-length", type=int, default=256)
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", action="store_true", help="check the policy with the verifiers")
    p.add_argument("--eval-prompts", type=Path, help="IFEval-format JSONL (default: --prompts)")
    p.add_argument("--eval-suite", default="ifeval", help="verifier suite for fliprm.verifiers")
    p.add_argument("--eval-max-new-tokens", type=int, default=512)
    return p.parse_args(argv)


def load_rows(path: Path) -> list[dict[str, Any]]:
    """IFEval rows; a bad line is a one-line error naming the file and line."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise SystemExit(f"{path}:{n}: not JSON: {exc}") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise SystemExit(f"{path}:{n}: needs a string 'prompt'")
        rows.append(row)
    if not rows:
        raise SystemExit(f"{path}: no prompts")
    return rows


def _instruction(prompt: Any) -> str:
    # TRL passes conversational prompts as message lists: the instruction is the last user turn
    if isinstance(prompt, list):
        return next(m["content"] for m in reversed(prompt) if m.get("role") == "user")
    return str(prompt)


def _text(completion: Any) -> str:
    if isinstance(completion, list):
        return str(completion[-1].get("content", "")) if completion else ""
    return str(completion)


def pointwise_reward_func(judge: Any) -> Callable[..., Any]:
    """The pointwise judge as a TRL reward: (SCORE - 1) / 9 in [0, 1]; None when unparseable,
    so TRL skips the sample instead of learning from a made-up score.

    >>> from fliprm.backends.fake import FakeBackend
    >>> from fliprm.judges import PointwiseJudge
    >>> fn = pointwise_reward_func(PointwiseJudge(FakeBackend(lambda r: '{"SCORE": 10}')))
    >>> asyncio.run(fn(prompts=["Say hi."], completions=["hi"]))
    [1.0]
    """

    async def pointwise_reward(prompts: Sequence[Any], completions: Sequence[Any],
                               **_: Any) -> list[float | None]:
        verdicts = await asyncio.gather(*(
            judge.arank(_instruction(p), [_text(c)]) for p, c in zip(prompts, completions)
        ))
        scores = [v.scores[0] if v.scores else None for v in verdicts]
        return [None if s is None else (s - 1.0) / 9.0 for s in scores]

    return pointwise_reward


def build_reward(args: argparse.Namespace) -> Callable[..., Any]:
    if args.reward == "flip":
        from fliprm.integrations.trl import get_flip_reward

        if args.judge_url:
            return get_flip_reward(server_url=args.judge_url, method=args.method)
        return get_flip_reward(backend=args.judge_backend, base_url=args.judge_base_url,
                               method=args.method)
    if args.judge_url:
        raise SystemExit("--judge-url serves FLIP only; for --reward pointwise use "
                         "--judge-backend openai:MODEL --judge-base-url URL")
    from fliprm.backends import get_backend
    from fliprm.judges import PointwiseJudge

    options = {"base_url": args.judge_base_url} if args.judge_base_url else {}
    return pointwise_reward_func(PointwiseJudge(get_backend(args.judge_backend, **options)))


def train(args: argparse.Namespace, rows: list[dict[str, Any]], reward: Callable[..., Any]) -> Any:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    dataset = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": r["prompt"]}] for r in rows]}
    )
    config = GRPOConfig(
        output_dir=str(args.output_dir),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        learning_rate=args.learning_rate,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        seed=args.seed,
    )
    trainer = GRPOTrainer(model=args.model, reward_funcs=[reward], args=config,
                          train_dataset=dataset)
    trainer.train()
    return trainer


def evaluate(trainer: Any, rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """One greedy answer per prompt, checked by ``fliprm.verifiers.verify``."""
    try:
        from fliprm.verifiers import verify
    except ImportError as exc:
        raise SystemExit(f"--eval needs fliprm.verifiers, which is not installed: {exc}") from None
    import torch

    model, tok = trainer.model, trainer.processing_class
    model.eval()
    verdicts = []
    for row in rows:
        text = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}],
                                       add_generation_prompt=True, tokenize=False)
        enc = tok(text, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.eval_max_new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        response = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        verdicts.append(verify(row, response, args.eval_suite))
    return {
        "prompts": len(verdicts),
        "prompt_strict": _mean(float(bool(v.prompt_strict)) for v in verdicts),
        "prompt_loose": _mean(float(bool(v.prompt_loose)) for v in verdicts),
        "inst_strict": _mean(x for v in verdicts for x in _flags(v.inst_strict)),
        "inst_loose": _mean(x for v in verdicts for x in _flags(v.inst_loose)),
    }


def _flags(value: Any) -> list[float]:
    # one flag per instruction, as IFEval reports them; a bare number counts as one
    if isinstance(value, (list, tuple)):
        return [float(bool(x)) for x in value]
    return [float(value)]


def _mean(values: Any) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else math.nan


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, optionally evaluate, write ``metrics.json``; returns what it wrote."""
    args = parse_args(argv)
    rows = load_rows(args.prompts)
    reward = build_reward(args)
    trainer = train(args, rows, reward)
    name = getattr(reward, "__name__", "reward")
    key = f"rewards/{name}/mean"
    summary: dict[str, Any] = {
        "reward": args.reward,
        "reward_key": key,
        "reward_per_step": [h[key] for h in trainer.state.log_history if key in h],
        "steps": trainer.state.global_step,
        "log_history": trainer.state.log_history,
    }
    if args.eval:
        summary["eval"] = evaluate(trainer, load_rows(args.eval_prompts or args.prompts), args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "metrics.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"{args.reward} reward per step: {summary['reward_per_step']}")
    if "eval" in summary:
        print("eval:", json.dumps(summary["eval"]))
    return summary


if __name__ == "__main__":
    main()
