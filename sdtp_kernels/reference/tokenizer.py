"""The reference model's tokenizer: the retrieval task's vocabulary as words (`<bos> f12 <key> k3 v40 ...`), split on
whitespace, so that text goes in and comes out of the model like any Hugging Face checkpoint's."""
from __future__ import annotations

from ..tasks.retrieval import RetrievalTask


def save_tokenizer(task: RetrievalTask, directory: str) -> None:
    """Write tokenizer.json and tokenizer_config.json for `task`'s vocabulary into `directory` (AutoTokenizer loads
    them). Unknown words are an error, never a silent id; no special token is added (prompts start with <bos>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({name: i for i, name in enumerate(task.token_names())}))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", padding_side="left")
    tokenizer.save_pretrained(directory)
