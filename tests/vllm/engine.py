"""Engine settings and helpers the vLLM test modules share (each module starts one engine)."""
import torch

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
