//! Writes the prepared module: the input's sections byte for byte, except the
//! export section, which gains the reserved exports, and the `roam-prepared`
//! marker, which is always the last section.
//!
//! Only what prepare adds is ever re-encoded, and the reserved exports come
//! in one canonical order, so preparing a prepared module changes nothing.

use std::borrow::Cow;

use wasm_encoder::{CustomSection, ExportKind, ExportSection, Module, RawSection};
use wasmparser::ExternalKind;

use crate::analyze::{Analysis, Section};
use crate::{PrepareError, PREPARED_SECTION, PREPARE_VERSION};

pub(crate) fn rewrite(analysis: &Analysis<'_>) -> Result<Vec<u8>, PrepareError> {
    let mut module = Module::new();
    for section in &analysis.sections {
        match section {
            Section::Raw { id, data } => {
                module.section(&RawSection { id: *id, data });
            }
            Section::Exports => {
                module.section(&exports(analysis)?);
            }
        }
    }
    module.section(&CustomSection {
        name: Cow::Borrowed(PREPARED_SECTION),
        data: Cow::Borrowed(&PREPARE_VERSION.to_le_bytes()),
    });
    Ok(module.finish())
}

/// The module's own exports in their order, then every global, table and
/// table function under its reserved name, each group by index.
fn exports(analysis: &Analysis<'_>) -> Result<ExportSection, PrepareError> {
    let mut section = ExportSection::new();
    for export in &analysis.exports {
        let kind = match export.kind {
            ExternalKind::Func => ExportKind::Func,
            ExternalKind::Table => ExportKind::Table,
            ExternalKind::Memory => ExportKind::Memory,
            ExternalKind::Global => ExportKind::Global,
            ExternalKind::Tag => ExportKind::Tag,
            // Needs the custom-descriptors proposal, which validation does not
            // enable; refuse rather than change the export's meaning.
            ExternalKind::FuncExact => {
                return Err(PrepareError::InvalidWasm {
                    message: format!("exact function export `{}` is not supported", export.name),
                    offset: 0,
                })
            }
        };
        section.export(export.name, kind, export.index);
    }
    let info = &analysis.info;
    for global in &info.globals {
        section.export(&global.export, ExportKind::Global, global.index);
    }
    for table in &info.tables {
        section.export(&table.export, ExportKind::Table, table.index);
    }
    for func in &info.table_funcs {
        section.export(&func.export, ExportKind::Func, func.index);
    }
    Ok(section)
}
