//! Chat templates: `tokenizer.chat_template` (Jinja) rendered the way Hugging Face's
//! `apply_chat_template` renders it, so an instruct model sees the prompt its users give it.
//!
//! Transformers renders with Jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls, a `raise_exception`
//! function) and passes `messages`, `add_generation_prompt` and the special tokens' text (`bos_token`,
//! `eos_token`). minijinja does the same with its Python-compatibility methods (`str.startswith`,
//! `split`, `strip`, ...), which cover what the common templates call. Not provided: `tools` and
//! `documents` (left undefined) and `strftime_now` (Llama 3.x templates fall back to a fixed date
//! without it). The rendered text is tokenized without BOS: templates that want one write `bos_token`.

use super::{Tokenizer, TYPE_CONTROL};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Control tokens that end an assistant's turn in the common chat formats (as llama.cpp's list of
/// end-of-generation tokens), besides the vocabulary's EOS.
const END_OF_TURN: [&str; 6] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
];

/// Renders `template` for `messages`; `bos` and `eos` are the special tokens' text.
pub fn render(
    template: &str,
    messages: &[Message],
    bos: &str,
    eos: &str,
    add_generation_prompt: bool,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    let bad = |e: minijinja::Error| Error::Invalid(format!("tokenizer.chat_template: {e}"));
    let t = env.template_from_str(template).map_err(bad)?;
    t.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos,
        eos_token => eos,
    })
    .map_err(bad)
}

impl Tokenizer {
    /// The text of token `id` as a template writes it (special tokens are their own text).
    fn token_text(&self, id: u32) -> String {
        self.pieces
            .get(id as usize)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default()
    }

    /// The prompt for `messages` in the vocabulary's chat format, ready for the assistant's turn.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            Error::Invalid(
                "the model has no tokenizer.chat_template, so it has no chat format".into(),
            )
        })?;
        render(
            template,
            messages,
            &self.token_text(self.bos),
            &self.token_text(self.eos),
            true,
        )
    }

    /// Token ids of the prompt for `messages` (the template writes BOS where the format has one).
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.encode(&self.chat_prompt(messages)?, false, false)
    }

    /// Tokens after which an assistant's turn is over: EOS and the control tokens of the common chat
    /// formats that this vocabulary has.
    pub fn end_of_turn(&self) -> Vec<u32> {
        let mut ids = vec![self.eos];
        for (i, p) in self.pieces.iter().enumerate() {
            if self.types.get(i) == Some(&TYPE_CONTROL)
                && END_OF_TURN.iter().any(|e| e.as_bytes() == p.as_slice())
            {
                ids.push(i as u32);
            }
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_trimmed_blocks_and_python_methods() {
        let t = "{% for m in messages %}\n  {%- if m.content.startswith('!') %}{{ raise_exception('no bangs') }}{% endif %}\n<{{ m.role }}>{{ m.content.strip() }}\n{% endfor %}\n{% if add_generation_prompt %}<assistant>{% endif %}";
        let msgs = [
            Message::new("user", "  hi  "),
            Message::new("assistant", "yo"),
        ];
        assert_eq!(
            render(t, &msgs, "<s>", "</s>", true).unwrap(),
            "<user>hi\n<assistant>yo\n<assistant>"
        );
        let e = render(t, &[Message::new("user", "!")], "", "", false).unwrap_err();
        assert!(e.to_string().contains("no bangs"), "{e}");
    }
}
