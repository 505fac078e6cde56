//! Where the selected events are kept: in memory, or on disk in chunks that
//! are read back one at a time.
//!
//! Every stage after the selection reads the events through
//! [`EventSet::for_each_chunk`]. In memory the whole set is one chunk. On
//! disk each chunk is read from a temporary file, so memory contains a few
//! chunks whatever the number of events. Chunks come in event order (process,
//! input, row), so sums accumulated chunk by chunk add the same numbers in
//! the same order as one pass over the events in memory.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::select::Events;

/// The selected events, in memory or on disk.
#[derive(Debug)]
pub enum EventSet {
    /// Every event in memory.
    Memory(Events),
    /// Chunks of events in a temporary file.
    Disk(DiskEvents),
}

impl EventSet {
    /// Number of events.
    pub fn len(&self) -> usize {
        match self {
            EventSet::Memory(e) => e.len(),
            EventSet::Disk(d) => d.len,
        }
    }

    /// Returns whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of discriminants.
    pub fn dims(&self) -> usize {
        match self {
            EventSet::Memory(e) => e.discriminants.len(),
            EventSet::Disk(d) => d.dims,
        }
    }

    /// Event range of each process.
    pub fn process_ranges(&self) -> &[Range<usize>] {
        match self {
            EventSet::Memory(e) => &e.process_ranges,
            EventSet::Disk(d) => &d.process_ranges,
        }
    }

    /// Returns whether the events carry the `selection.mass` column.
    pub fn has_mass(&self) -> bool {
        match self {
            EventSet::Memory(e) => e.mass.is_some(),
            EventSet::Disk(d) => d.has_mass,
        }
    }

    /// Returns the events when they are in memory.
    pub fn in_memory(&self) -> Option<&Events> {
        match self {
            EventSet::Memory(e) => Some(e),
            EventSet::Disk(_) => None,
        }
    }

    /// Calls `f` with each chunk of events, in event order, and stops at
    /// the first error.
    ///
    /// A chunk's `process_ranges` has one entry per process, relative to
    /// the chunk, empty for processes without events in it.
    pub fn for_each_chunk(&self, mut f: impl FnMut(&Events) -> Result<()>) -> Result<()> {
        match self {
            EventSet::Memory(e) => f(e),
            // A reader thread reads the next chunk while `f` works on the
            // current one and hands it over when `f` is done, so at most
            // two chunks are in memory.
            EventSet::Disk(d) => std::thread::scope(|scope| {
                let (send, receive) = std::sync::mpsc::sync_channel::<Result<Events>>(0);
                scope.spawn(move || {
                    let mut file = match File::open(&d.path) {
                        Ok(file) => file,
                        Err(e) => {
                            let _ = send.send(Err(d.error(e)));
                            return;
                        }
                    };
                    for chunk in 0..d.chunks.len() {
                        let events = d.read(&mut file, chunk);
                        let failed = events.is_err();
                        // The receiver is gone when `f` failed.
                        if send.send(events).is_err() || failed {
                            return;
                        }
                    }
                });
                for events in receive {
                    f(&events?)?;
                }
                Ok(())
            }),
        }
    }

    /// Sum of weights of each process, in float64.
    pub fn process_yields(&self) -> Result<Vec<f64>> {
        let mut yields = vec![0.0f64; self.process_ranges().len()];
        self.for_each_chunk(|chunk| {
            for (p, range) in chunk.process_ranges.iter().enumerate() {
                // A running sum adds in the same order whatever the chunks.
                yields[p] = chunk.weight[range.clone()].iter().fold(yields[p], |a, w| a + w);
            }
            Ok(())
        })?;
        Ok(yields)
    }
}

/// Events written in chunks to a temporary file, deleted on drop.
///
/// Each chunk contains its events column after column, little-endian: each
/// discriminant (f64), the weight (f64), the mass (f64, when present), the
/// process (u32), the input (u32) and the row (u64).
#[derive(Debug)]
pub struct DiskEvents {
    _dir: tempfile::TempDir,
    path: PathBuf,
    dims: usize,
    has_mass: bool,
    processes: usize,
    /// Byte offset and number of events of each chunk.
    chunks: Vec<(u64, usize)>,
    process_ranges: Vec<Range<usize>>,
    len: usize,
}

impl DiskEvents {
    /// Number of chunks.
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Size of the file in bytes.
    pub fn bytes(&self) -> u64 {
        self.chunks.last().map_or(0, |&(offset, n)| offset + (n * self.row_bytes()) as u64)
    }

    fn row_bytes(&self) -> usize {
        row_bytes(self.dims, self.has_mass)
    }

    fn error(&self, e: std::io::Error) -> Error {
        Error::Internal(format!(
            "reading the events spilled to {}: {e}; check that the temporary \
             directory (TMPDIR) is not cleaned while gato runs",
            self.path.display()
        ))
    }

    /// Reads chunk `chunk`, column by column through a small buffer, so
    /// that reading needs no more memory than the chunk itself.
    fn read(&self, file: &mut File, chunk: usize) -> Result<Events> {
        let (offset, n) = self.chunks[chunk];
        file.seek(SeekFrom::Start(offset)).map_err(|e| self.error(e))?;

        let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
        let mut f64s = || read_column(&mut reader, n, f64::from_le_bytes);
        let discriminants: Vec<Vec<f64>> =
            (0..self.dims).map(|_| f64s()).collect::<std::io::Result<_>>().map_err(|e| self.error(e))?;
        let weight = f64s().map_err(|e| self.error(e))?;
        let mass = if self.has_mass { Some(f64s().map_err(|e| self.error(e))?) } else { None };
        let process = read_column(&mut reader, n, u32::from_le_bytes).map_err(|e| self.error(e))?;
        let input = read_column(&mut reader, n, u32::from_le_bytes).map_err(|e| self.error(e))?;
        let row = read_column(&mut reader, n, u64::from_le_bytes).map_err(|e| self.error(e))?;

        let mut start = 0;
        let process_ranges = (0..self.processes)
            .map(|p| {
                let end = start + process[start..].partition_point(|&q| q as usize <= p);
                let range = start..end;
                start = end;
                range
            })
            .collect();
        Ok(Events {
            discriminants,
            weight,
            process,
            input,
            row,
            process_ranges,
            mass,
            weight2: None,
            count: None,
        })
    }
}

/// Reads `n` little-endian values of `W` bytes each.
fn read_column<T, const W: usize>(
    reader: &mut impl Read,
    n: usize,
    decode: fn([u8; W]) -> T,
) -> std::io::Result<Vec<T>> {
    let mut values = Vec::with_capacity(n);
    let mut buffer = [0u8; 8192];
    let per_block = buffer.len() / W;
    let mut left = n;
    while left > 0 {
        let take = left.min(per_block);
        let bytes = &mut buffer[..take * W];
        reader.read_exact(bytes)?;
        values.extend(bytes.chunks_exact(W).map(|c| {
            let mut value = [0u8; W];
            value.copy_from_slice(c);
            decode(value)
        }));
        left -= take;
    }
    Ok(values)
}

fn row_bytes(dims: usize, has_mass: bool) -> usize {
    8 * dims + 8 + if has_mass { 8 } else { 0 } + 4 + 4 + 8
}

/// Writes chunks of events to a temporary file.
pub struct DiskWriter {
    dir: tempfile::TempDir,
    path: PathBuf,
    file: BufWriter<File>,
    dims: usize,
    has_mass: bool,
    chunks: Vec<(u64, usize)>,
    offset: u64,
}

impl DiskWriter {
    /// Creates the file in a new temporary directory under `parent`.
    pub fn create(parent: &Path, dims: usize, has_mass: bool) -> Result<DiskWriter> {
        let dir = tempfile::Builder::new()
            .prefix("gato-events-")
            .tempdir_in(parent)
            .map_err(|e| {
                Error::output(
                    parent,
                    format!(
                        "cannot create a directory for the selected events: {e}; set \
                         TMPDIR to a writable directory with room for them"
                    ),
                )
            })?;
        let path = dir.path().join("events.bin");
        let file = File::create(&path)
            .map_err(|e| Error::output(&path, format!("cannot create: {e}")))?;
        Ok(DiskWriter {
            dir,
            path,
            file: BufWriter::with_capacity(1 << 20, file),
            dims,
            has_mass,
            chunks: Vec::new(),
            offset: 0,
        })
    }

    /// Appends `events` as one chunk.
    pub fn write(&mut self, events: &Events) -> Result<()> {
        let n = events.len();
        if n == 0 {
            return Ok(());
        }
        let path = self.path.clone();
        let io = move |e: std::io::Error| {
            Error::output(
                &path,
                format!("cannot write the selected events: {e}; free disk space or set TMPDIR"),
            )
        };
        let file = &mut self.file;
        for column in events.discriminants.iter().chain([&events.weight]) {
            column.iter().try_for_each(|v| file.write_all(&v.to_le_bytes())).map_err(&io)?;
        }
        if self.has_mass {
            let mass = events.mass.as_ref().ok_or_else(|| {
                Error::Internal("a chunk of events lacks the mass column".into())
            })?;
            mass.iter().try_for_each(|v| file.write_all(&v.to_le_bytes())).map_err(&io)?;
        }
        events.process.iter().try_for_each(|v| file.write_all(&v.to_le_bytes())).map_err(&io)?;
        events.input.iter().try_for_each(|v| file.write_all(&v.to_le_bytes())).map_err(&io)?;
        events.row.iter().try_for_each(|v| file.write_all(&v.to_le_bytes())).map_err(&io)?;
        self.chunks.push((self.offset, n));
        self.offset += (n * row_bytes(self.dims, self.has_mass)) as u64;
        Ok(())
    }

    /// Flushes the file and returns the events it holds.
    pub fn finish(
        mut self,
        processes: usize,
        process_ranges: Vec<Range<usize>>,
    ) -> Result<DiskEvents> {
        self.file
            .flush()
            .map_err(|e| Error::output(&self.path, format!("cannot write: {e}")))?;
        let len = self.chunks.iter().map(|c| c.1).sum();
        Ok(DiskEvents {
            _dir: self.dir,
            path: self.path,
            dims: self.dims,
            has_mass: self.has_mass,
            processes,
            chunks: self.chunks,
            process_ranges,
            len,
        })
    }
}
