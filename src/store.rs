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

    /// Event ranges that hold the events of input `input`: one per process
    /// with events from it, in process order. Rows rise within each range.
    pub fn input_ranges(&self, input: u32) -> Vec<Range<usize>> {
        match self {
            EventSet::Memory(e) => e
                .process_ranges
                .iter()
                .map(|range| {
                    let inputs = &e.input[range.clone()];
                    let start = range.start + inputs.partition_point(|&i| i < input);
                    let end = range.start + inputs.partition_point(|&i| i <= input);
                    start..end
                })
                .filter(|range| !range.is_empty())
                .collect(),
            EventSet::Disk(d) => d
                .segments
                .iter()
                .filter(|s| s.input == input)
                .map(|s| s.events.clone())
                .collect(),
        }
    }

    /// Returns a reader of the discriminants and rows of event ranges.
    pub fn range_reader(&self) -> Result<RangeReader<'_>> {
        Ok(match self {
            EventSet::Memory(e) => RangeReader::Memory(e),
            EventSet::Disk(d) => {
                RangeReader::Disk(d, File::open(&d.path).map_err(|e| d.error(e))?)
            }
        })
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

/// Reads the discriminants and rows of any range of events.
pub enum RangeReader<'a> {
    /// Copies from the events in memory.
    Memory(&'a Events),
    /// Reads from the events' file.
    Disk(&'a DiskEvents, File),
}

impl RangeReader<'_> {
    /// Returns the discriminants (one vector each) and the rows of the
    /// events in `range`.
    pub fn read(&mut self, range: Range<usize>) -> Result<(Vec<Vec<f64>>, Vec<u64>)> {
        match self {
            RangeReader::Memory(e) => Ok((
                e.discriminants.iter().map(|d| d[range.clone()].to_vec()).collect(),
                e.row[range].to_vec(),
            )),
            RangeReader::Disk(d, file) => d.read_range(file, range).map_err(|e| d.error(e)),
        }
    }
}

/// The events of one process from one input: a range of the event order.
#[derive(Debug, Clone)]
struct Segment {
    input: u32,
    events: Range<usize>,
}

/// Events written in chunks to a temporary file, deleted on drop.
///
/// Each chunk contains its events column after column, little-endian: each
/// discriminant (f64), the weight (f64), the mass (f64, when present), the
/// process (u32), the input (u32) and the row (u64).
#[derive(Debug)]
pub struct DiskEvents {
    _dir: tempfile::TempDir,
    _tracked: crate::interrupt::Tracked,
    path: PathBuf,
    dims: usize,
    has_mass: bool,
    processes: usize,
    /// Byte offset and number of events of each chunk.
    chunks: Vec<(u64, usize)>,
    /// Index of the first event of each chunk.
    chunk_starts: Vec<usize>,
    process_ranges: Vec<Range<usize>>,
    /// Event range of each (process, input) pair, in event order.
    segments: Vec<Segment>,
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

    /// Reads the discriminants and rows of the events in `range`, which may
    /// span chunks, with one read per column and chunk.
    fn read_range(
        &self,
        file: &mut File,
        range: Range<usize>,
    ) -> std::io::Result<(Vec<Vec<f64>>, Vec<u64>)> {
        let mut discriminants = vec![Vec::with_capacity(range.len()); self.dims];
        let mut rows = Vec::with_capacity(range.len());
        let mut bytes = Vec::new();
        let first = self.chunk_starts.partition_point(|&s| s <= range.start).saturating_sub(1);
        for chunk in first..self.chunks.len() {
            let (offset, n) = self.chunks[chunk];
            let start = self.chunk_starts[chunk];
            if start >= range.end {
                break;
            }
            let (lo, hi) = (range.start.max(start) - start, range.end.min(start + n) - start);
            // Each column contains n values. The row column follows the
            // discriminants, the weight, the mass, the process and the input.
            for (d, column) in discriminants.iter_mut().enumerate() {
                read_at(file, offset + ((d * n + lo) * 8) as u64, hi - lo, &mut bytes)?;
                column.extend(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(eight(c))));
            }
            let before_row = n * (row_bytes(self.dims, self.has_mass) - 8);
            read_at(file, offset + (before_row + lo * 8) as u64, hi - lo, &mut bytes)?;
            rows.extend(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(eight(c))));
        }
        if rows.len() != range.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("events {range:?} lie past the last of {}", self.len),
            ));
        }
        Ok((discriminants, rows))
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

/// Reads `n` values of eight bytes at byte `at` of `file` into `bytes`.
fn read_at(file: &mut File, at: u64, n: usize, bytes: &mut Vec<u8>) -> std::io::Result<()> {
    bytes.resize(n * 8, 0);
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(bytes)
}

fn eight(bytes: &[u8]) -> [u8; 8] {
    let mut value = [0u8; 8];
    value.copy_from_slice(bytes);
    value
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
    tracked: crate::interrupt::Tracked,
    path: PathBuf,
    file: BufWriter<File>,
    dims: usize,
    has_mass: bool,
    chunks: Vec<(u64, usize)>,
    offset: u64,
    /// Process, input and first event of each (process, input) pair.
    segments: Vec<(u32, u32, usize)>,
    written: usize,
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
            tracked: crate::interrupt::Tracked::new(dir.path()),
            dir,
            path,
            file: BufWriter::with_capacity(1 << 20, file),
            dims,
            has_mass,
            chunks: Vec::new(),
            offset: 0,
            segments: Vec::new(),
            written: 0,
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
        for (i, key) in events.process.iter().zip(&events.input).enumerate() {
            if self.segments.last().is_none_or(|s| (s.0, s.1) != (*key.0, *key.1)) {
                self.segments.push((*key.0, *key.1, self.written + i));
            }
        }
        self.chunks.push((self.offset, n));
        self.offset += (n * row_bytes(self.dims, self.has_mass)) as u64;
        self.written += n;
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
        let len = self.written;
        let mut chunk_starts = Vec::with_capacity(self.chunks.len());
        let mut start = 0;
        for &(_, n) in &self.chunks {
            chunk_starts.push(start);
            start += n;
        }
        let ends = self.segments.iter().skip(1).map(|s| s.2).chain([len]);
        let segments = self
            .segments
            .iter()
            .zip(ends)
            .map(|(&(_, input, start), end)| Segment { input, events: start..end })
            .collect();
        Ok(DiskEvents {
            _dir: self.dir,
            _tracked: self.tracked,
            path: self.path,
            dims: self.dims,
            has_mass: self.has_mass,
            processes,
            chunks: self.chunks,
            chunk_starts,
            process_ranges,
            segments,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 23 events of three processes from two inputs, sorted by process,
    /// input and row; process 1 has no events from input 1.
    fn events() -> (Events, Vec<(u32, u32)>) {
        let layout = [(0u32, 0u32, 5usize), (0, 1, 4), (1, 0, 6), (2, 0, 3), (2, 1, 5)];
        let mut events = Events {
            discriminants: vec![Vec::new(), Vec::new()],
            mass: Some(Vec::new()),
            ..Events::default()
        };
        for &(process, input, n) in &layout {
            for k in 0..n {
                let i = events.weight.len() as f64;
                events.discriminants[0].push(i * 0.5);
                events.discriminants[1].push(-i);
                events.weight.push(1.0 + i);
                events.mass.as_mut().unwrap().push(100.0 + i);
                events.process.push(process);
                events.input.push(input);
                events.row.push(3 * k as u64 + u64::from(process));
            }
        }
        let mut start = 0;
        for p in 0..3 {
            let n = events.process.iter().filter(|&&q| q == p).count();
            events.process_ranges.push(start..start + n);
            start += n;
        }
        (events, layout.iter().map(|&(p, i, _)| (p, i)).collect())
    }

    fn on_disk(events: &Events, chunk: usize) -> EventSet {
        let mut writer = DiskWriter::create(&std::env::temp_dir(), 2, true).unwrap();
        for start in (0..events.len()).step_by(chunk) {
            let end = (start + chunk).min(events.len());
            let part = Events {
                discriminants: events.discriminants.iter().map(|d| d[start..end].to_vec()).collect(),
                weight: events.weight[start..end].to_vec(),
                process: events.process[start..end].to_vec(),
                input: events.input[start..end].to_vec(),
                row: events.row[start..end].to_vec(),
                mass: events.mass.as_ref().map(|m| m[start..end].to_vec()),
                ..Events::default()
            };
            writer.write(&part).unwrap();
        }
        EventSet::Disk(writer.finish(3, events.process_ranges.clone()).unwrap())
    }

    #[test]
    fn ranges_memory_and_disk_agree() {
        let (events, _) = events();
        let expected_ranges =
            [vec![0..5, 9..15, 15..18], vec![5..9, 18..23]];
        let sets = [EventSet::Memory(events.clone()), on_disk(&events, 7), on_disk(&events, 1)];
        for set in &sets {
            for (input, expected) in expected_ranges.iter().enumerate() {
                assert_eq!(&set.input_ranges(input as u32), expected);
            }
            assert!(set.input_ranges(2).is_empty());
            let mut reader = set.range_reader().unwrap();
            for range in [0..23, 3..17, 6..7, 13..21, 4..4] {
                let (discriminants, rows) = reader.read(range.clone()).unwrap();
                assert_eq!(rows, events.row[range.clone()]);
                for d in 0..2 {
                    assert_eq!(discriminants[d], events.discriminants[d][range.clone()]);
                }
            }
        }
    }

    #[test]
    fn range_past_end_fails() {
        let (events, _) = events();
        let set = on_disk(&events, 7);
        let error = set.range_reader().unwrap().read(20..30).unwrap_err().to_string();
        assert!(error.contains("past the last of 23"), "{error}");
    }
}
