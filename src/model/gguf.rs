//! GGUF files (llama.cpp's format) for the Llama family: `general.architecture` `llama`
//! (Llama, SmolLM/SmolLM2, Mistral-converted) and `qwen2`.
//!
//! What [`load`] does, mirroring transformers' GGUF loader (`modeling_gguf_pytorch_utils.py`,
//! `integrations/ggml.py`, `integrations/gguf/gguf_tokenizer_mapping.py`) so that the result
//! matches `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`:
//!
//! * the [`llama::Config`] comes from metadata (`{arch}.block_count`, `.embedding_length`,
//!   `.feed_forward_length`, `.attention.head_count[_kv]`, `.rope.freq_base`,
//!   `.attention.layer_norm_rms_epsilon`, `.context_length`; vocabulary size from
//!   `{arch}.vocab_size` or the number of tokens); the embeddings are tied when there is no
//!   `output.weight`;
//! * every tensor is dequantised to f32 and renamed to its Hugging Face name;
//! * for `llama`, llama.cpp's converter permuted the rows of `attn_q` / `attn_k` to its
//!   interleaved rotary layout; we undo it exactly as transformers' `LlamaTensorProcessor`
//!   (`reshape(n_head, rows / n_head / 2, 2, cols).swapaxes(1, 2)`) so that the HF `rotate_half`
//!   forward pass applies. Qwen2 is converted without that permutation;
//! * the tokenizer is rebuilt from `tokenizer.ggml.*` as a byte-level BPE `tokenizer.json`.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::str::FromStr;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde_json::{json, Map, Value as Json};
use tokenizers::Tokenizer;

use super::llama::{self, RopeParameters};
use super::ArchConfig;
use crate::error::{Context, Error, Result};

/// A GGUF file turned into what [`super::Model::assemble`] needs.
pub struct GgufModel {
    pub config: ArchConfig,
    /// Dequantised f32 tensors under HF names (`model.layers.0.self_attn.q_proj.weight`, ...).
    pub weights: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
}

/// Read a GGUF file: config from its metadata, f32 weights under HF names, tokenizer.
pub fn load(path: &Path, device: &Device) -> Result<GgufModel> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).context(|| {
        format!(
            "{} is not a readable GGUF file (bad magic or truncated header)",
            path.display()
        )
    })?;
    let meta = Meta {
        path,
        md: &content.metadata,
    };

    let arch = meta.string("general.architecture")?.to_string();
    if arch != "llama" && arch != "qwen2" {
        return Err(Error::InvalidInput(format!(
            "{}: GGUF architecture '{arch}' is not supported (supported: llama, qwen2)",
            path.display()
        )));
    }
    let config = config_from_metadata(&meta, &arch, &content)?;
    let tokenizer = tokenizer_from_metadata(&meta)?;

    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut weights = HashMap::with_capacity(names.len());
    for name in names {
        // llama.cpp stores Llama 3.1's rope scaling as per-frequency divisors; transformers'
        // GGUF loader ignores this tensor too (see the module docs).
        if name == "rope_freqs.weight" {
            continue;
        }
        let hf = hf_name(name).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{}: tensor '{name}' has no Hugging Face Llama/Qwen2 equivalent",
                path.display()
            ))
        })?;
        let tensor = content
            .tensor(&mut reader, name, device)
            .and_then(|q| q.dequantize(device))
            .context(|| {
                format!(
                    "{}: cannot read tensor '{name}' (truncated or corrupt file?)",
                    path.display()
                )
            })?;
        let tensor = if arch == "llama" && (name.contains(".attn_q.") || name.contains(".attn_k."))
        {
            let heads = if name.contains(".attn_q.") {
                config.num_attention_heads
            } else {
                config.n_kv_heads()
            };
            reverse_permute(&tensor, heads).context(|| {
                format!(
                    "{}: tensor '{name}': undoing llama.cpp's rotary permutation",
                    path.display()
                )
            })?
        } else {
            tensor
        };
        weights.insert(hf, tensor);
    }
    Ok(GgufModel {
        config: ArchConfig::Llama(config),
        weights,
        tokenizer,
    })
}

/// Undo llama.cpp's `permute` of q/k rows (transformers' `_reverse_permute_weights`):
/// rows are grouped per head as `(n_head, 2, rows/n_head/2)` in HF order and
/// `(n_head, rows/n_head/2, 2)` in GGUF order.
fn reverse_permute(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims.first().copied().unwrap_or(0);
    if n_head == 0 || rows % (2 * n_head) != 0 {
        candle_core::bail!("{rows} rows cannot be split into {n_head} heads of rotary pairs")
    }
    let half = rows / n_head / 2;
    let rest: usize = dims.iter().skip(1).product();
    w.reshape((n_head, half, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// GGUF tensor name → HF name (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`).
fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let hf = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_norm" => "input_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Typed access to GGUF metadata with errors that name the file and the key.
struct Meta<'a> {
    path: &'a Path,
    md: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn missing(&self, key: &str) -> Error {
        Error::InvalidInput(format!(
            "{}: GGUF metadata key '{key}' is missing",
            self.path.display()
        ))
    }

    fn wrong(&self, key: &str, want: &str, got: &Value) -> Error {
        Error::InvalidInput(format!(
            "{}: GGUF metadata key '{key}' should be {want}, found {:?}",
            self.path.display(),
            got.value_type()
        ))
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.md.get(key).ok_or_else(|| self.missing(key))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.md.get(key) else {
            return Ok(None);
        };
        let n: i128 = match v {
            Value::U8(x) => *x as i128,
            Value::I8(x) => *x as i128,
            Value::U16(x) => *x as i128,
            Value::I16(x) => *x as i128,
            Value::U32(x) => *x as i128,
            Value::I32(x) => *x as i128,
            Value::U64(x) => *x as i128,
            Value::I64(x) => *x as i128,
            other => return Err(self.wrong(key, "an integer", other)),
        };
        usize::try_from(n).map(Some).map_err(|_| {
            Error::InvalidInput(format!(
                "{}: GGUF metadata key '{key}' is {n}",
                self.path.display()
            ))
        })
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x as f64)),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(other) => Err(self.wrong(key, "a float", other)),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong(key, "a bool", other)),
        }
    }

    fn string(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            other => Err(self.wrong(key, "a string", other)),
        }
    }

    fn opt_string(&self, key: &str) -> Result<Option<&str>> {
        if self.md.contains_key(key) {
            self.string(key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.get(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    other => Err(self.wrong(key, "an array of strings", other)),
                })
                .collect(),
            other => Err(self.wrong(key, "an array of strings", other)),
        }
    }

    fn opt_ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::I32(x) => Ok(*x as i64),
                    Value::U32(x) => Ok(*x as i64),
                    Value::I64(x) => Ok(*x),
                    Value::U8(x) => Ok(*x as i64),
                    Value::I8(x) => Ok(*x as i64),
                    other => Err(self.wrong(key, "an array of integers", other)),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(other) => Err(self.wrong(key, "an array of integers", other)),
        }
    }
}

/// `llama::Config` from GGUF metadata (the keys transformers' `GGUF_CONFIG_MAPPING` reads).
fn config_from_metadata(meta: &Meta, arch: &str, content: &Content) -> Result<llama::Config> {
    let key = |k: &str| format!("{arch}.{k}");
    let n_heads = meta.usize(&key("attention.head_count"))?;
    let vocab_size = match meta.opt_usize(&key("vocab_size"))? {
        Some(v) => v,
        None => meta.strings("tokenizer.ggml.tokens")?.len(),
    };
    let rope_scaling = match meta.opt_string(&key("rope.scaling.type"))? {
        None | Some("none") => None,
        Some("linear") => Some(RopeParameters {
            rope_type: Some("linear".into()),
            factor: Some(
                meta.opt_f64(&key("rope.scaling.factor"))?
                    .ok_or_else(|| meta.missing(&key("rope.scaling.factor")))?,
            ),
            ..Default::default()
        }),
        Some(other) => {
            return Err(Error::InvalidInput(format!(
                "{}: rope scaling '{other}' ({}) is not supported",
                meta.path.display(),
                key("rope.scaling.type")
            )))
        }
    };
    let has = |name: &str| content.tensor_infos.contains_key(name);
    Ok(llama::Config {
        model_type: Some(arch.to_string()),
        architectures: Vec::new(),
        vocab_size,
        hidden_size: meta.usize(&key("embedding_length"))?,
        intermediate_size: meta.usize(&key("feed_forward_length"))?,
        num_hidden_layers: meta.usize(&key("block_count"))?,
        num_attention_heads: n_heads,
        num_key_value_heads: Some(
            meta.opt_usize(&key("attention.head_count_kv"))?
                .unwrap_or(n_heads),
        ),
        // transformers maps `llama.rope.dimension_count` to head_dim (Llama/Mistral only).
        head_dim: if arch == "llama" {
            meta.opt_usize(&key("rope.dimension_count"))?
        } else {
            None
        },
        hidden_act: "silu".into(),
        max_position_embeddings: meta.usize(&key("context_length"))?,
        rms_norm_eps: meta
            .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| meta.missing(&key("attention.layer_norm_rms_epsilon")))?,
        rope_theta: Some(meta.opt_f64(&key("rope.freq_base"))?.unwrap_or(10000.0)),
        rope_parameters: None,
        rope_scaling,
        // As transformers: tied exactly when the file has no separate `output.weight`.
        tie_word_embeddings: !has("output.weight"),
        attention_bias: arch == "qwen2" || has("blk.0.attn_q.bias"),
        mlp_bias: has("blk.0.ffn_up.bias"),
        initializer_range: 0.02,
        sliding_window: None,
        use_sliding_window: None,
        max_window_layers: None,
        layer_types: None,
    })
}

/// GPT-2's byte → printable-character table (`bytes_to_unicode`).
fn byte_alphabet() -> Vec<char> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in printable.iter().zip(chars) {
        if let (Some(slot), Some(ch)) = (table.get_mut(*b as usize), char::from_u32(c)) {
            *slot = ch;
        }
    }
    table
}

/// Pre-tokenizer split patterns by `tokenizer.ggml.pre` (transformers' `GGUF_PRE_TOKENIZER_SPLITS`).
fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => {
            Some(LLAMA3)
        }
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2),
        _ => None,
    }
}

/// The pre-tokenizer for `tokenizer.ggml.pre`.
///
/// * `smollm`: digits one by one, then GPT-2's byte-level regex — SmolLM2's own `tokenizer.json`
///   and llama.cpp's `LLAMA_VOCAB_PRE_TYPE_SMOLLM`. transformers 5.24's GGUF converter has no
///   entry for `smollm` and uses the plain GPT-2 regex; the two agree except where a digit
///   follows a run of spaces (`"x  1"`: `"ĠĠ" "1"` here and in SmolLM2, `"Ġ" "Ġ" "1"` there).
/// * Llama-3 / Qwen2 families: transformers' split regex, then byte-level without regex.
/// * anything else (`gpt2`, `default`, ...): GPT-2's byte-level regex, as transformers.
fn pre_tokenizer(pre: Option<&str>) -> Json {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    match pre {
        Some("smollm") => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]
        }),
        Some(p) => match split_regex(p) {
            Some(regex) => json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                    byte_level(false)
                ]
            }),
            None => byte_level(true),
        },
        None => byte_level(true),
    }
}

/// Rebuild the byte-level BPE tokenizer described by `tokenizer.ggml.*` (what transformers'
/// `byte_level_tokenizer` + `add_gguf_special_tokens` + `set_split_regex` build), as a
/// `tokenizer.json` document handed to `tokenizers`.
fn tokenizer_from_metadata(meta: &Meta) -> Result<Tokenizer> {
    let path = meta.path;
    let model = meta.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(Error::Tokenizer(format!(
            "{}: tokenizer.ggml.model '{model}' is not supported (only byte-level BPE, 'gpt2')",
            path.display()
        )));
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let types = meta
        .opt_ints("tokenizer.ggml.token_type")?
        .unwrap_or_default();

    // Tokens are stored in GPT-2's byte alphabet; one with other characters is respelled from its
    // UTF-8 bytes, as transformers does.
    let table = byte_alphabet();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Map::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(token) {
            token.to_string()
        } else {
            token
                .bytes()
                .filter_map(|b| table.get(b as usize))
                .collect::<String>()
        };
        vocab.insert(spelled, json!(id));
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| json!([a, b]))
                .ok_or_else(|| {
                    Error::Tokenizer(format!("{}: malformed BPE merge '{m}'", path.display()))
                })
        })
        .collect::<Result<_>>()?;

    // Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain added
    // tokens, so both stay whole; so do the bos/eos/unk/pad tokens.
    let special_ids: Vec<usize> = ["bos", "eos", "unknown", "padding"]
        .iter()
        .filter_map(|k| {
            meta.opt_usize(&format!("tokenizer.ggml.{k}_token_id"))
                .ok()
                .flatten()
        })
        .collect();
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        let kind = types.get(id).copied().unwrap_or(1);
        let special = (kind == 3 || special_ids.contains(&id)) && in_alphabet(token);
        let user = kind == 4 && vocab.contains_key(*token);
        if special || user {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special
            }));
        }
    }

    let token_of = |key: &str| -> Result<Option<(String, usize)>> {
        Ok(meta
            .opt_usize(key)?
            .and_then(|id| tokens.get(id).map(|t| (t.to_string(), id))))
    };
    let bos = token_of("tokenizer.ggml.bos_token_id")?;
    let eos = token_of("tokenizer.ggml.eos_token_id")?;
    let add_bos = meta
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(false);
    let add_eos = meta
        .opt_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    let post_processor = post_processor(
        add_bos.then_some(bos).flatten(),
        add_eos.then_some(eos).flatten(),
    );

    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(meta.opt_string("tokenizer.ggml.pre")?),
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges
        }
    });
    Tokenizer::from_str(&doc.to_string()).map_err(|e| {
        Error::Tokenizer(format!(
            "{}: cannot build the tokenizer from GGUF metadata: {e}",
            path.display()
        ))
    })
}

/// BOS/EOS added around each sequence when the file asks for it (`add_bos_token`).
fn post_processor(bos: Option<(String, usize)>, eos: Option<(String, usize)>) -> Json {
    if bos.is_none() && eos.is_none() {
        return Json::Null;
    }
    let mut special = Map::new();
    let piece = |t: &Option<(String, usize)>, special: &mut Map<String, Json>| {
        t.as_ref().map(|(tok, id)| {
            special.insert(
                tok.clone(),
                json!({"id": tok, "ids": [id], "tokens": [tok]}),
            );
            json!({"SpecialToken": {"id": tok, "type_id": 0}})
        })
    };
    let b = piece(&bos, &mut special);
    let e = piece(&eos, &mut special);
    let seq = |id: &str| json!({"Sequence": {"id": id, "type_id": 0}});
    let mut single = Vec::new();
    single.extend(b.clone());
    single.push(seq("A"));
    single.extend(e.clone());
    let mut pair = single.clone();
    pair.extend(b);
    pair.push(seq("B"));
    pair.extend(e);
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.12.attn_output.weight").as_deref(),
            Some("model.layers.12.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.attn_q.bias").as_deref(),
            Some("model.layers.0.self_attn.q_proj.bias")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert!(hf_name("blk.x.attn_q.weight").is_none());
        assert!(hf_name("blk.0.attn_qkv.weight").is_none());
    }

    #[test]
    fn reverse_permute_matches_transformers() {
        // 2 heads of 4 rows: GGUF row order per head is (0, 2, 1, 3) of HF's (pairs interleaved).
        let w = Tensor::arange(0f32, 8., &Device::Cpu)
            .unwrap()
            .reshape((8, 1))
            .unwrap();
        let r = reverse_permute(&w, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(r, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        assert!(reverse_permute(&w, 3).is_err());
    }

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let t = byte_alphabet();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        let mut sorted = t.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
    }
}
