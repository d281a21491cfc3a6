//! Which entity a command goes to: uniform or Zipf over `n` entities.

use crate::Rng;

/// The distribution of keys.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Distribution {
    Uniform,
    /// P(rank k) ∝ 1 / k^s; rank 1 is the hottest entity.
    Zipf {
        s: f64,
    },
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uniform => write!(f, "uniform"),
            Self::Zipf { s } => write!(f, "zipf(s={s})"),
        }
    }
}

/// A sampler of entity indexes in `[0, n)`.
#[derive(Debug, Clone)]
pub struct Keys {
    n: u64,
    /// Cumulative distribution for Zipf (`cdf[k]` = P(index ≤ k)); `None` = uniform.
    cdf: Option<Vec<f64>>,
}

impl Keys {
    /// `n` entities (at least 1).
    pub fn new(n: u64, distribution: Distribution) -> Self {
        let n = n.max(1);
        let cdf = match distribution {
            Distribution::Uniform => None,
            Distribution::Zipf { s } => {
                let mut acc = 0.0;
                let mut cdf: Vec<f64> = (1..=n)
                    .map(|k| {
                        acc += 1.0 / (k as f64).powf(s);
                        acc
                    })
                    .collect();
                for c in &mut cdf {
                    *c /= acc;
                }
                Some(cdf)
            }
        };
        Self { n, cdf }
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        match &self.cdf {
            None => rng.below(self.n),
            Some(cdf) => {
                let u = rng.next_f64();
                (cdf.partition_point(|&c| c < u) as u64).min(self.n - 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_and_uniform_is_not() {
        let mut rng = Rng::new(7);
        let zipf = Keys::new(1000, Distribution::Zipf { s: 1.1 });
        let uniform = Keys::new(1000, Distribution::Uniform);
        let (mut hot_z, mut hot_u) = (0, 0);
        for _ in 0..100_000 {
            let z = zipf.sample(&mut rng);
            let u = uniform.sample(&mut rng);
            assert!(z < 1000 && u < 1000);
            hot_z += u32::from(z < 10);
            hot_u += u32::from(u < 10);
        }
        // The 10 hottest of 1000 keys get about half the Zipf(1.1) traffic, 1% of the uniform.
        assert!(hot_z > 30_000, "{hot_z}");
        assert!(hot_u < 2_000, "{hot_u}");
    }
}
