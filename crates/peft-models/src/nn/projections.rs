//! Walking a model's projections: each one knows its Hugging Face module path, so a model only
//! lists which of its fields hold projections (`has_projections!`), never a path.

use peft_core::Projection;

/// A module that holds projections, directly or in its children.
pub trait HasProjections {
    /// Appends its projections, in model order.
    fn collect<'a>(&'a self, out: &mut Vec<&'a Projection>);
    /// The same, mutable.
    fn collect_mut<'a>(&'a mut self, out: &mut Vec<&'a mut Projection>);

    /// Every projection with its path, in model order.
    fn projections(&self) -> Vec<(String, &Projection)> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out.into_iter().map(|p| (p.path.clone(), p)).collect()
    }

    /// The same, mutable.
    fn projections_mut(&mut self) -> Vec<(String, &mut Projection)> {
        let mut out = Vec::new();
        self.collect_mut(&mut out);
        out.into_iter().map(|p| (p.path.clone(), p)).collect()
    }
}

impl HasProjections for Projection {
    fn collect<'a>(&'a self, out: &mut Vec<&'a Projection>) {
        out.push(self);
    }
    fn collect_mut<'a>(&'a mut self, out: &mut Vec<&'a mut Projection>) {
        out.push(self);
    }
}

impl<T: HasProjections> HasProjections for Vec<T> {
    fn collect<'a>(&'a self, out: &mut Vec<&'a Projection>) {
        self.iter().for_each(|m| m.collect(out));
    }
    fn collect_mut<'a>(&'a mut self, out: &mut Vec<&'a mut Projection>) {
        self.iter_mut().for_each(|m| m.collect_mut(out));
    }
}

/// Implements [`HasProjections`] for a struct from the fields, in model order, that are
/// projections or hold some: `has_projections!(LlamaAttention: q_proj, k_proj, v_proj, o_proj);`.
macro_rules! has_projections {
    ($ty:ty: $($field:ident),+ $(,)?) => {
        impl $crate::nn::projections::HasProjections for $ty {
            fn collect<'a>(&'a self, out: &mut Vec<&'a peft_core::Projection>) {
                $($crate::nn::projections::HasProjections::collect(&self.$field, out);)+
            }
            fn collect_mut<'a>(&'a mut self, out: &mut Vec<&'a mut peft_core::Projection>) {
                $($crate::nn::projections::HasProjections::collect_mut(&mut self.$field, out);)+
            }
        }
    };
}
/// Implements [`HasProjections`] for an enum whose variants each hold one value that has
/// projections: `has_projections_enum!(QkvProjections: Separate, Fused);`.
macro_rules! has_projections_enum {
    ($ty:ident: $($variant:ident),+ $(,)?) => {
        impl $crate::nn::projections::HasProjections for $ty {
            fn collect<'a>(&'a self, out: &mut Vec<&'a peft_core::Projection>) {
                match self {
                    $(Self::$variant(inner) => {
                        $crate::nn::projections::HasProjections::collect(inner, out)
                    })+
                }
            }
            fn collect_mut<'a>(&'a mut self, out: &mut Vec<&'a mut peft_core::Projection>) {
                match self {
                    $(Self::$variant(inner) => {
                        $crate::nn::projections::HasProjections::collect_mut(inner, out)
                    })+
                }
            }
        }
    };
}
pub(crate) use has_projections;
pub(crate) use has_projections_enum;
