//! The portable path of the depthwise kernel.

use crate::depthwise::band::Portable;

super::table!(generic, Portable);
