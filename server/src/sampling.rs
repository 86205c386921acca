//! Logits processors the engine runs for Ferry's sampling options: `min_tokens`/`ignore_eos`
//! and per-request `seed`.

use std::sync::atomic::{AtomicUsize, Ordering};

use mistralrs::{CustomLogitsProcessor, DType, Tensor};

/// Keeps end-of-sequence tokens from being sampled until `min_tokens` tokens are generated.
pub(crate) struct HoldEos {
    eos: Vec<u32>,
    min_tokens: usize,
    prompt_len: AtomicUsize,
}

impl HoldEos {
    pub(crate) fn new(eos: Vec<u32>, min_tokens: usize) -> Self {
        Self {
            eos,
            min_tokens,
            prompt_len: AtomicUsize::new(usize::MAX),
        }
    }
}

impl CustomLogitsProcessor for HoldEos {
    fn apply(&self, logits: &Tensor, context: &[u32]) -> mistralrs::Result<Tensor> {
        // The first call sees the prompt alone; later calls the prompt plus what was generated.
        let _ = self.prompt_len.compare_exchange(
            usize::MAX,
            context.len(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        let generated = context
            .len()
            .saturating_sub(self.prompt_len.load(Ordering::SeqCst));
        if generated >= self.min_tokens {
            return Ok(logits.clone());
        }
        let mut values = to_f32(logits)?;
        for &id in &self.eos {
            if let Some(v) = values.get_mut(id as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
        from_f32(values, logits)
    }
}

/// Reproducible sampling for requests with a `seed` (the engine has no per-request seed): picks
/// the token from the temperature/top-p distribution with a generator seeded by the request's
/// seed and position, then leaves the engine only that token to choose.
pub(crate) struct SeededSampler {
    pub(crate) seed: u64,
    pub(crate) temperature: f64,
    pub(crate) top_p: f64,
}

impl CustomLogitsProcessor for SeededSampler {
    fn apply(&self, logits: &Tensor, context: &[u32]) -> mistralrs::Result<Tensor> {
        let values = to_f32(logits)?;
        let chosen = seeded_choice(
            &values,
            self.temperature,
            self.top_p,
            splitmix(self.seed ^ context.len() as u64),
        );
        let forced = values
            .iter()
            .enumerate()
            .map(|(i, _)| if i == chosen { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        from_f32(forced, logits)
    }
}

/// Samples an index from softmax(logits / temperature) restricted to the top-p mass, using a
/// uniform number derived from `random` (deterministic for a given input).
pub(crate) fn seeded_choice(logits: &[f32], temperature: f64, top_p: f64, random: u64) -> usize {
    let t = temperature.max(1e-4);
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, ((l as f64 - max) / t).exp()))
        .filter(|(_, p)| *p > 0.0)
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, p) in probs.iter().enumerate() {
        kept += p.1 / total;
        if kept >= top_p {
            cut = i + 1;
            break;
        }
    }
    probs.truncate(cut.max(1));
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut target = (random >> 11) as f64 / (1u64 << 53) as f64 * mass;
    for (i, p) in &probs {
        target -= p;
        if target <= 0.0 {
            return *i;
        }
    }
    probs.last().map(|p| p.0).unwrap_or(0)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn to_f32(t: &Tensor) -> mistralrs::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

fn from_f32(values: Vec<f32>, like: &Tensor) -> mistralrs::Result<Tensor> {
    Tensor::from_vec(values, like.shape(), like.device())?.to_dtype(like.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_choice_is_deterministic_and_respects_top_p() {
        let logits = [2.0, 1.0, 0.5, -1.0, -3.0];
        for r in [0u64, 1, u64::MAX / 3, u64::MAX] {
            assert_eq!(
                seeded_choice(&logits, 0.8, 1.0, r),
                seeded_choice(&logits, 0.8, 1.0, r)
            );
        }
        // top_p this small keeps only the most likely token.
        for r in [0u64, 12345, u64::MAX] {
            assert_eq!(seeded_choice(&logits, 1.0, 0.01, r), 0);
        }
        // different random inputs reach different tokens at high temperature
        let picks: std::collections::BTreeSet<usize> = (0..64)
            .map(|i| seeded_choice(&logits, 5.0, 1.0, splitmix(i)))
            .collect();
        assert!(picks.len() >= 3, "{picks:?}");
    }

    #[test]
    fn seeded_choice_never_picks_masked_tokens() {
        let logits = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        for i in 0..100 {
            let c = seeded_choice(&logits, 1.0, 1.0, splitmix(i));
            assert!(c == 1 || c == 3, "{c}");
        }
    }
}
