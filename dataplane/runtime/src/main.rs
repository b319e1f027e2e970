//! wsedge dataplane binary (being written)
fn main() {}
