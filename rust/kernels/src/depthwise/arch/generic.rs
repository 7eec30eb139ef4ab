//! The portable path of the depthwise kernel.

super::table!(generic);
