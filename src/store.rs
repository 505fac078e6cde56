//! Where the selected events are kept: in memory, or on disk in chunks that
//! are read back one at a time.
//!
//! Every stage after the selection reads the events through
//! [`EventSet::for_each_chunk`]. In memory the whole set is one chunk; on
//! disk each chunk is read from a temporary file, so memory holds one chunk
//! whatever the number of events. Chunks come in event order (process,
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

    /// Whether the events carry the `selection.mass` column.
    pub fn has_mass(&self) -> bool {
        match self {
            EventSet::Memory(e) => e.mass.is_some(),
            EventSet::Disk(d) => d.has_mass,
        }
    }

    /// The events, when they are in memory.
    pub fn in_memory(&self) -> Option<&Events> {
        match self {
            EventSet::Memory(e) => Some(e),
            EventSet::Disk(_) => None,
        }
    }

    /// Calls `f` with each chunk of events, in event order.
    ///
    /// A chunk's `process_ranges` has one entry per process, relative to
    /// the chunk, empty for processes without events in it.
    pub fn for_each_chunk(&self, mut f: impl FnMut(&Events) -> Result<()>) -> Result<()> {
        match self {
            EventSet::Memory(e) => f(e),
            EventSet::Disk(d) => {
                let mut file = File::open(&d.path).map_err(|e| d.error(e))?;
                for chunk in 0..d.chunks.len() {
                    f(&d.read(&mut file, chunk)?)?;
                }
                Ok(())
            }
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
/// Each chunk holds its events column after column, little-endian: each
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

    fn read(&self, file: &mut File, chunk: usize) -> Result<Events> {
        let (offset, n) = self.chunks[chunk];
        let mut bytes = vec![0u8; n * self.row_bytes()];
        file.seek(SeekFrom::Start(offset)).map_err(|e| self.error(e))?;
        file.read_exact(&mut bytes).map_err(|e| self.error(e))?;
        let mut rest = bytes.as_slice();
        let mut take = |width: usize| {
            let (head, tail) = rest.split_at(n * width);
            rest = tail;
            head
        };
        let f64s = |b: &[u8]| -> Vec<f64> {
            b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
        };
        let discriminants: Vec<Vec<f64>> = (0..self.dims).map(|_| f64s(take(8))).collect();
        let weight = f64s(take(8));
        let mass = self.has_mass.then(|| f64s(take(8)));
        let process: Vec<u32> = take(4)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let input: Vec<u32> = take(4)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let row: Vec<u64> = take(8)
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
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
        let mut bytes = Vec::with_capacity(n * row_bytes(self.dims, self.has_mass));
        for column in events.discriminants.iter().chain([&events.weight]) {
            column.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        }
        if self.has_mass {
            let mass = events.mass.as_ref().ok_or_else(|| {
                Error::Internal("a chunk of events lacks the mass column".into())
            })?;
            mass.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        }
        events.process.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        events.input.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        events.row.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        self.file.write_all(&bytes).map_err(&io)?;
        self.chunks.push((self.offset, n));
        self.offset += bytes.len() as u64;
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
