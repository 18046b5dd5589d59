//! Records: the files one side of the pipeline writes and another reads.
//! Build, boot tests and release stand side by side over them, each
//! depending on the records and never on another side's code: the release
//! side reads boot-test evidence without linking the qemu harness.

pub mod buildinfo;
pub mod evidence;
