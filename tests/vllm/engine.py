"""Engine settings and helpers the vLLM test modules share (each module starts one engine)."""
import contextlib

import torch

TOLERANCE = 1e-4  # fp32 log-probabilities of two implementations of the same model
ENGINE = dict(dtype="float32", skip_tokenizer_init=True, enable_prefix_caching=False, enable_chunked_prefill=False,
              max_model_len=1024, max_num_batched_tokens=4096, seed=0)


def start(model: str, **overrides):
    from vllm import LLM

    return LLM(model=model, **{**ENGINE, **overrides})


def greedy(max_tokens: int, **options):
    from vllm import SamplingParams

    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **options)


def generate(llm, prompts, max_tokens, **options):
    """(tokens, log-probabilities of those tokens) of each prompt."""
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], [greedy(m, logprobs=1, **options)
                                                                        for m in max_tokens], use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outputs]
    logprobs = [[step[t].logprob for step, t in zip(o.outputs[0].logprobs, toks)] for o, toks in zip(outputs, tokens)]
    return tokens, logprobs


def hf_generate(model, prompt, max_tokens):
    """transformers' greedy generate(): (tokens, their log-probabilities)."""
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False, pad_token_id=0,
                         eos_token_id=None, output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt):].tolist()
    logprobs = [torch.log_softmax(step[0].double(), -1)[t].item() for step, t in zip(out.logits, tokens)]
    return tokens, logprobs


def hf_model(folder: str, **schedule):
    from transformers import AutoModelForCausalLM

    from sdtp_kernels.hf import apply_sdtp

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return apply_sdtp(model, folder, **schedule)


def hf_reference(folder: str, prompts, max_tokens, pruned: bool = True):
    """apply_sdtp + generate() on the exported folder (pruned=False: with pruning disabled): (tokens,
    log-probabilities) of each prompt."""
    from sdtp_kernels.hf import sdtp_disabled

    model = hf_model(folder)
    with contextlib.nullcontext() if pruned else sdtp_disabled(model):
        return [hf_generate(model, p, m) for p, m in zip(prompts, max_tokens)]


def assert_same_generation(prompts, tokens, logprobs, reference):
    """vLLM's (tokens, logprobs) per prompt equal the reference's: tokens exactly, log-probabilities to TOLERANCE."""
    for prompt, got, got_lp, (want, want_lp) in zip(prompts, tokens, logprobs, reference, strict=True):
        assert got == want, f"prompt of {len(prompt)} tokens"
        difference = (torch.tensor(got_lp, dtype=torch.float64) - torch.tensor(want_lp, dtype=torch.float64)).abs()
        assert difference.max().item() <= TOLERANCE, f"prompt of {len(prompt)} tokens: {difference.tolist()}"


def _model_class(worker) -> str:
    return type(worker.model_runner.get_model()).__name__


def served_classes(llm) -> list[str]:
    """The class of the model each rank of the engine runs."""
    return llm.collective_rpc(_model_class)


def preemptions(llm) -> float:
    """Requests the engine has preempted so far (its stats need disable_log_stats=False)."""
    return sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")
