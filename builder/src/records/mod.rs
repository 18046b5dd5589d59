//! records: the files one side of the pipeline writes and another reads.

pub mod buildinfo;
