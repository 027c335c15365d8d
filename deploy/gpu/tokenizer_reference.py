#!/usr/bin/env python3
"""HF's token ids for texts under tokenizer directories, to compare with
orrery's (`orrery tokenizer encode`). Run where HF `tokenizers`,
`sentencepiece` and `transformers` are installed (the GPU machine):

    tokenizer_reference.py TEXTS.json DIR [DIR ...] > ids.json

TEXTS.json is a list of strings. For a directory with tokenizer.json the ids
come from `tokenizers` and from transformers' PreTrainedTokenizerFast; with
tokenizer.model from `sentencepiece` and from transformers' LlamaTokenizer
(legacy, no BOS). Each entry also says whether the two agree."""
import json
import os
import sys


def main():
    texts = json.load(open(sys.argv[1], encoding="utf-8"))
    out = {}
    for d in sys.argv[2:]:
        rows = []
        if os.path.exists(os.path.join(d, "tokenizer.json")):
            from tokenizers import Tokenizer
            from transformers import PreTrainedTokenizerFast
            tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
            fast = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"))
            for t in texts:
                ids = tok.encode(t, add_special_tokens=False).ids
                rows.append({"text": t, "ids": ids, "transformers_ids": fast.encode(t, add_special_tokens=False),
                             "decoded": tok.decode(ids, skip_special_tokens=False)})
        else:
            import sentencepiece
            from transformers import LlamaTokenizer
            sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(d, "tokenizer.model"))
            slow = LlamaTokenizer(vocab_file=os.path.join(d, "tokenizer.model"), legacy=True, add_bos_token=False)
            for t in texts:
                ids = sp.encode(t)
                rows.append({"text": t, "ids": ids, "transformers_ids": slow.encode(t, add_special_tokens=False),
                             "decoded": sp.decode(ids)})
        for r in rows:
            r["agree"] = r["ids"] == r["transformers_ids"]
        out[os.path.basename(os.path.normpath(d))] = rows
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
