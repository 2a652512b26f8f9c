from manifests import load_groups
from manifests.tiny import tiny_clip_tokenizer, tiny_qwen_tokenizer, tiny_t5_tokenizer


def test_concept_words_are_single_tokens_in_every_tiny_tokenizer():
    clip, t5, qwen = tiny_clip_tokenizer(), tiny_t5_tokenizer(), tiny_qwen_tokenizer()
    for group in load_groups():
        for concept in group.concepts:
            for word in concept.lower().replace("-", " ").split():
                assert len(clip(word, add_special_tokens=False).input_ids) == 1, word
                assert len(t5(word, add_special_tokens=False).input_ids) == 1, word
                assert len(qwen(" " + word, add_special_tokens=False).input_ids) == 1, word


def test_special_tokens_and_roundtrip():
    clip = tiny_clip_tokenizer()
    ids = clip("a photo of a lemon", padding="max_length", max_length=10).input_ids
    assert ids[0] == clip.bos_token_id and ids[-1] == clip.pad_token_id == clip.eos_token_id
    t5 = tiny_t5_tokenizer()
    assert (t5.pad_token_id, t5.eos_token_id) == (0, 1)
    qwen = tiny_qwen_tokenizer()
    text = '```json\n[{"bbox_2d": [1, 20, 300, 4000], "label": "lime"}]\n```'
    assert qwen.decode(qwen(text).input_ids) == text
    prompt = qwen.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "find the lime"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "<|vision_start|><|image_pad|><|vision_end|>find the lime<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    for token in ("<|im_start|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>"):
        assert len(qwen(token, add_special_tokens=False).input_ids) == 1
