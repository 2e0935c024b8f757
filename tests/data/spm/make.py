"""Writes the SentencePiece test data of tests/gguf.rs (run once; the outputs are committed).

Trains a small SentencePiece BPE model with byte fallback (as Llama 2, Mistral and Gemma
tokenizers are), then writes from it:

- tokenizer.json: the model in the layout Meta's and Mistral's published `tokenizer.json` files
  have (LlamaTokenizerFast, legacy: `Prepend("▁")` + `Replace(" ", "▁")` normalizer, BPE with
  byte fallback and merges ranked by piece score as transformers' converter ranks them, `<s>`
  added by the post-processor);
- gguf_vocab.json: what llama.cpp's `convert_hf_to_gguf.py` (`_create_vocab_sentencepiece`) puts
  in `tokenizer.ggml.*` for the same model: tokens, scores, token types, special ids.

Needs `pip install sentencepiece tokenizers`. Every text in TEXTS encodes the same with the
tokenizer.json as with SentencePiece itself (checked below).

`python3 make.py MODEL OUT` writes the same two files for an existing SentencePiece model into
OUT instead (e.g. Mistral 7B's `tokenizer.model.v1` from the `mistral-common` wheel), to run the
test against a real vocabulary by copying them here.
"""

import io
import json
import pathlib
import sys

import sentencepiece as spm
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent.parent.parent
OUT = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else HERE

if len(sys.argv) > 1:
    sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
else:
    # Training text: the order-extraction dataset plus lines with accents and other scripts.
    lines = []
    for line in (ROOT / "datasets/order-extraction/train.jsonl").read_text().splitlines():
        for message in json.loads(line)["messages"]:
            lines.append(message["content"])
    lines += [
        "Café, crème brûlée et naïveté à Genève.",
        "Grüße aus München: Straße, Füße, Äpfel.",
        "Numbers 0123456789 and 3.14159, 2,718.",
    ]

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=600,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())

# llama.cpp's token types: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6.
tokens, scores, types = [], [], []
for i in range(sp.get_piece_size()):
    tokens.append(sp.id_to_piece(i))
    scores.append(sp.get_score(i))
    if sp.is_unknown(i):
        types.append(2)
    elif sp.is_control(i):
        types.append(3)
    elif sp.is_unused(i):
        types.append(5)
    elif sp.is_byte(i):
        types.append(6)
    else:
        types.append(1)
(OUT / "gguf_vocab.json").write_text(
    json.dumps(
        {
            "tokens": tokens,
            "scores": scores,
            "token_type": types,
            "unknown_token_id": sp.unk_id(),
            "bos_token_id": sp.bos_id(),
            "eos_token_id": sp.eos_id(),
        },
        ensure_ascii=False,
    )
)

# transformers' ranking of SentencePiece BPE merges: by the merged piece's score, then its id,
# over normal pieces only.
vocab = {piece: i for i, piece in enumerate(tokens)}
normal = {piece: (scores[i], i) for i, piece in enumerate(tokens) if types[i] == 1}
ranked = []
for piece, (score, i) in normal.items():
    for split in range(1, len(piece)):
        left, right = piece[:split], piece[split:]
        if left in normal and right in normal:
            ranked.append((-score, i, left, right))
merges = [(left, right) for _, _, left, right in sorted(ranked)]

tokenizer = Tokenizer(
    BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
)
tokenizer.add_special_tokens(
    [AddedToken(t, normalized=False, special=True) for t in ["<unk>", "<s>", "</s>"]]
)
tokenizer.normalizer = normalizers.Sequence(
    [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
)
tokenizer.post_processor = processors.TemplateProcessing(
    single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
)
tokenizer.decoder = decoders.Sequence(
    [
        decoders.Replace("▁", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ]
)
tokenizer.save(str(OUT / "tokenizer.json"))

TEXTS = [
    "Ship to: Fatima Haddad, Dublin. Items: 8 purple backpacks.",
    "  two  spaces\nand a line\ttab",
    "Café crème à Genève, Grüße",
    "digits 20261206 and 3.14",
    "unicode 日本語 ✓ 🚀 falls back to bytes",
]
for text in TEXTS:
    ours = tokenizer.encode(text, add_special_tokens=False).ids
    theirs = sp.encode(text)
    assert ours == theirs, (text, ours, theirs)
print(f"wrote {len(tokens)} pieces, {len(merges)} merges; tokenizer.json encodes like SentencePiece")
