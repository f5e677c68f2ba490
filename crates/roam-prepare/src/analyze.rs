//! Reads and validates a module, checks it against the worker contract and
//! works out its [`ModuleInfo`].
//!
//! The result keeps the module's sections as borrowed byte ranges, so the
//! rewrite can copy everything it does not change without re-encoding it.

use std::collections::BTreeSet;
use std::ops::Range;

use wasmparser::{
    CompositeInnerType, ConstExpr, DataKind, DataSectionReader, ElementItems, ElementKind,
    ElementSectionReader, Encoding, Export, ExportSectionReader, ExternalKind,
    FuncValidatorAllocations, GlobalSectionReader, ImportSectionReader, MemorySectionReader,
    Operator, Parser, Payload, RefType, TableInit, TableSectionReader, TypeRef, ValType,
    ValidPayload, Validator, WasmFeatures,
};

use wasmparser::types::{Types, TypesRef};

use crate::contract::{
    allowed_import, describe_func, Signature, ALLOC_EXPORT, INITIALIZE_EXPORT, INIT_EXPORT,
    MEMORY_EXPORT, ON_MESSAGE_EXPORT, WASI_MODULE,
};
use crate::info::{
    func_export, global_export, table_export, FuncExport, GlobalInfo, GlobalType, MemoryInfo,
    ModuleInfo, TableInfo, RESERVED_PREFIX,
};
use crate::{PrepareError, PrepareOptions, PREPARED_SECTION};

/// The size of a wasm page; custom page sizes are not enabled, so it is fixed.
const PAGE_SIZE: u64 = 65536;

/// The most pages a 32-bit memory can have.
const MAX_PAGES_32: u64 = 65536;

/// The wasm features wasmtime 48 enables by default for core modules: the
/// WebAssembly 3.0 set (its default cargo features include gc and threads).
///
/// Memory64, shared memories and multiple memories are part of that set; the
/// contract refuses them by name after validation rather than leaving them to
/// a bare validator message.
pub(crate) fn features() -> WasmFeatures {
    WasmFeatures::WASM3
}

/// One section of the input, in order, as the rewrite will emit it.
pub(crate) enum Section<'a> {
    /// Copied unchanged.
    Raw { id: u8, data: &'a [u8] },
    /// The export section, re-encoded.
    Exports,
}

/// A validated worker module, ready to be rewritten.
pub(crate) struct Analysis<'a> {
    pub info: ModuleInfo,
    /// Every section but `roam-prepared` custom sections.
    pub sections: Vec<Section<'a>>,
    /// The module's exports minus the reserved ones, in order.
    pub exports: Vec<Export<'a>>,
}

/// The section readers the contract checks look at after validation.
#[derive(Default)]
struct Readers<'a> {
    imports: Option<ImportSectionReader<'a>>,
    tables: Option<TableSectionReader<'a>>,
    globals: Option<GlobalSectionReader<'a>>,
    exports: Option<ExportSectionReader<'a>>,
    elements: Vec<ElementSectionReader<'a>>,
    data: Option<DataSectionReader<'a>>,
    has_start: bool,
}

pub(crate) fn analyze<'a>(
    bytes: &'a [u8],
    options: &PrepareOptions,
) -> Result<Analysis<'a>, PrepareError> {
    if bytes.len() > options.max_module_size {
        return Err(PrepareError::TooLarge {
            size: bytes.len(),
            limit: options.max_module_size,
        });
    }
    if !bytes.starts_with(b"\0asm") {
        return Err(PrepareError::NotWasm);
    }
    if Parser::is_component(bytes) {
        return Err(PrepareError::Component);
    }

    let (types, readers, sections) = validate(bytes)?;
    let types = types.as_ref();
    let invalid = PrepareError::invalid;

    check_types(types)?;

    let wasi_imports = match readers.imports.clone() {
        Some(reader) => check_imports(types, reader)?,
        None => BTreeSet::new(),
    };

    if types.memory_count() == 0 {
        return Err(PrepareError::NoMemory);
    }
    // Imported memories were refused above, so memory 0 is the defined one.
    let memory_type = types.memory_at(0);
    let memory = MemoryInfo {
        min_pages: memory_type.initial,
        max_pages: memory_type.maximum,
    };

    // Every function wasm lets code take a reference to (the validator's
    // "declared function references"): these, and only these, can end up in a
    // table or a funcref global.
    let mut referenced = BTreeSet::new();

    let mut tables = Vec::new();
    if let Some(reader) = readers.tables.clone() {
        for (index, table) in (0u32..).zip(reader) {
            let table = table.map_err(invalid)?;
            if table.ty.element_type != RefType::FUNCREF {
                return Err(PrepareError::UnsupportedTable {
                    index,
                    element_type: table.ty.element_type.to_string(),
                });
            }
            if let TableInit::Expr(expr) = &table.init {
                collect_ref_funcs(expr, &mut referenced)?;
            }
            tables.push(TableInfo {
                index,
                min: table.ty.initial,
                max: table.ty.maximum,
                export: table_export(index),
            });
        }
    }

    let mut globals = Vec::new();
    // The value of each immutable integer global, where a constant sets it,
    // for resolving data segment offsets.
    let mut constants: Vec<Option<Constant>> = Vec::new();
    if let Some(reader) = readers.globals.clone() {
        for (index, global) in (0u32..).zip(reader) {
            let global = global.map_err(invalid)?;
            collect_ref_funcs(&global.init_expr, &mut referenced)?;
            if global.ty.mutable {
                let ty = match global.ty.content_type {
                    ValType::I32 => GlobalType::I32,
                    ValType::I64 => GlobalType::I64,
                    ValType::F32 => GlobalType::F32,
                    ValType::F64 => GlobalType::F64,
                    ValType::V128 => GlobalType::V128,
                    ValType::Ref(RefType::FUNCREF) => GlobalType::FuncRef,
                    other => {
                        return Err(PrepareError::UnsupportedGlobal {
                            index,
                            value_type: other.to_string(),
                        })
                    }
                };
                globals.push(GlobalInfo {
                    index,
                    ty,
                    export: global_export(index),
                });
                constants.push(None);
            } else {
                constants.push(evaluate(&global.init_expr, &constants));
            }
        }
    }

    for reader in &readers.elements {
        for element in reader.clone() {
            let element = element.map_err(invalid)?;
            if let ElementKind::Active { offset_expr, .. } = &element.kind {
                collect_ref_funcs(offset_expr, &mut referenced)?;
            }
            match element.items {
                ElementItems::Functions(functions) => {
                    for function in functions {
                        referenced.insert(function.map_err(invalid)?);
                    }
                }
                ElementItems::Expressions(_, exprs) => {
                    for expr in exprs {
                        collect_ref_funcs(&expr.map_err(invalid)?, &mut referenced)?;
                    }
                }
            }
        }
    }

    // Exports: keep the module's own, set the reserved ones aside to check
    // once the full set prepare would add is known.
    let mut exports = Vec::new();
    let mut reserved = Vec::new();
    if let Some(reader) = readers.exports.clone() {
        for export in reader {
            let export = export.map_err(invalid)?;
            if export.name.starts_with(RESERVED_PREFIX) {
                reserved.push(export);
                continue;
            }
            if matches!(export.kind, ExternalKind::Func | ExternalKind::FuncExact) {
                referenced.insert(export.index);
            }
            exports.push(export);
        }
    }

    let table_funcs: Vec<FuncExport> = referenced
        .into_iter()
        .map(|index| FuncExport {
            index,
            export: func_export(index),
        })
        .collect();

    check_reserved_exports(&reserved, &globals, &tables, &table_funcs)?;

    let find = |name: &str| exports.iter().find(|export| export.name == name);
    match find(MEMORY_EXPORT) {
        None => {
            return Err(PrepareError::MissingExport {
                name: MEMORY_EXPORT.to_string(),
            })
        }
        Some(export) if export.kind != ExternalKind::Memory => {
            return Err(PrepareError::ExportSignature {
                name: MEMORY_EXPORT.to_string(),
                expected: "memory".to_string(),
                found: describe_export(types, export),
            })
        }
        Some(_) => {}
    }
    for (name, signature) in [ALLOC_EXPORT, ON_MESSAGE_EXPORT] {
        match find(name) {
            None => {
                return Err(PrepareError::MissingExport {
                    name: name.to_string(),
                })
            }
            Some(export) => check_export_func(types, export, &signature)?,
        }
    }
    let exports_optional = |(name, signature): (&str, Signature)| match find(name) {
        Some(export) => check_export_func(types, export, &signature).map(|()| true),
        None => Ok(false),
    };
    let has_init = exports_optional(INIT_EXPORT)?;
    let has_initialize = exports_optional(INITIALIZE_EXPORT)?;

    let data_ranges = data_ranges(&readers, &memory, &constants)?;

    let info = ModuleInfo {
        memory,
        globals,
        tables,
        table_funcs,
        func_count: types.function_count(),
        has_init,
        has_initialize,
        wasi_imports: wasi_imports.into_iter().collect(),
        data_ranges,
    };
    Ok(Analysis {
        info,
        sections,
        exports,
    })
}

/// Validates the whole module, refusing the memory shapes a worker cannot
/// have as their sections go by, and keeps what the later checks read.
fn validate(bytes: &[u8]) -> Result<(Types, Readers<'_>, Vec<Section<'_>>), PrepareError> {
    let invalid = PrepareError::invalid;
    let mut parser = Parser::new(0);
    parser.set_features(features());
    let mut validator = Validator::new_with_features(features());
    let mut allocations = FuncValidatorAllocations::default();
    let mut readers = Readers::default();
    let mut sections = Vec::new();
    let mut types = None;

    for payload in parser.parse_all(bytes) {
        let payload = payload.map_err(invalid)?;
        match &payload {
            Payload::Version {
                encoding: Encoding::Component,
                ..
            } => return Err(PrepareError::Component),
            Payload::ImportSection(reader) => {
                check_imported_memories(reader.clone())?;
                readers.imports = Some(reader.clone());
            }
            Payload::MemorySection(reader) => {
                check_memories(reader.clone())?;
            }
            Payload::TableSection(reader) => readers.tables = Some(reader.clone()),
            Payload::GlobalSection(reader) => readers.globals = Some(reader.clone()),
            Payload::ExportSection(reader) => readers.exports = Some(reader.clone()),
            Payload::ElementSection(reader) => readers.elements.push(reader.clone()),
            Payload::DataSection(reader) => readers.data = Some(reader.clone()),
            Payload::StartSection { .. } => readers.has_start = true,
            _ => {}
        }

        match validator.payload(&payload).map_err(invalid)? {
            ValidPayload::Ok | ValidPayload::Parser(_) => {}
            ValidPayload::Func(function, body) => {
                let mut function = function.into_validator(std::mem::take(&mut allocations));
                function.validate(&body).map_err(invalid)?;
                allocations = function.into_allocations();
            }
            ValidPayload::End(end) => types = Some(end),
        }

        match &payload {
            Payload::CustomSection(custom) if custom.name() == PREPARED_SECTION => {}
            Payload::ExportSection(_) => sections.push(Section::Exports),
            other => {
                if let Some((id, range)) = other.as_section() {
                    // The code section is announced before its bodies are
                    // read, so its declared size may still run past the end.
                    let data = bytes.get(range).ok_or(PrepareError::InvalidWasm {
                        message: "section extends past the end of the module".to_string(),
                        offset: bytes.len(),
                    })?;
                    sections.push(Section::Raw { id, data });
                }
            }
        }
    }

    let types = types.ok_or_else(|| PrepareError::InvalidWasm {
        message: "unexpected end of module".to_string(),
        offset: bytes.len(),
    })?;
    Ok((types, readers, sections))
}

/// Checks every import against the contract and returns the names of the
/// WASI functions imported.
fn check_imports(
    types: TypesRef<'_>,
    reader: ImportSectionReader<'_>,
) -> Result<BTreeSet<String>, PrepareError> {
    let mut wasi_imports = BTreeSet::new();
    for import in reader.into_imports() {
        let import = import.map_err(PrepareError::invalid)?;
        let module = || import.module.to_string();
        let name = || import.name.to_string();
        let type_index = match import.ty {
            TypeRef::Func(type_index) | TypeRef::FuncExact(type_index) => type_index,
            TypeRef::Memory(_) => {
                return Err(PrepareError::ImportedMemory {
                    module: module(),
                    name: name(),
                })
            }
            TypeRef::Table(_) => {
                return Err(PrepareError::ImportedTable {
                    module: module(),
                    name: name(),
                })
            }
            TypeRef::Global(_) => {
                return Err(PrepareError::ImportedGlobal {
                    module: module(),
                    name: name(),
                })
            }
            TypeRef::Tag(_) => {
                return Err(PrepareError::ImportNotAllowed {
                    module: module(),
                    name: name(),
                })
            }
        };
        let Some(signature) = allowed_import(import.module, import.name) else {
            return Err(PrepareError::ImportNotAllowed {
                module: module(),
                name: name(),
            });
        };
        let ty = types[types.core_type_at_in_module(type_index)].unwrap_func();
        if !signature.matches(ty) {
            return Err(PrepareError::ImportSignature {
                module: module(),
                name: name(),
                expected: signature.describe(),
                found: describe_func(ty),
            });
        }
        if import.module == WASI_MODULE {
            wasi_imports.insert(name());
        }
    }
    Ok(wasi_imports)
}

/// Refuses imported memories before the validator sees them, so that an
/// imported shared memory is reported as imported rather than as invalid.
fn check_imported_memories(reader: ImportSectionReader<'_>) -> Result<(), PrepareError> {
    for import in reader.into_imports() {
        let import = import.map_err(PrepareError::invalid)?;
        if let TypeRef::Memory(_) = import.ty {
            return Err(PrepareError::ImportedMemory {
                module: import.module.to_string(),
                name: import.name.to_string(),
            });
        }
    }
    Ok(())
}

/// Refuses the memory shapes a worker cannot have. Runs before validation
/// because the validator itself would reject a shared memory with a message
/// about the threads proposal instead.
fn check_memories(reader: MemorySectionReader<'_>) -> Result<(), PrepareError> {
    let count = reader.count();
    if count > 1 {
        return Err(PrepareError::MultipleMemories { count });
    }
    for (index, memory) in (0u32..).zip(reader) {
        let memory = memory.map_err(PrepareError::invalid)?;
        if memory.memory64 {
            return Err(PrepareError::Memory64 { index });
        }
        if memory.shared {
            return Err(PrepareError::SharedMemory { index });
        }
    }
    Ok(())
}

/// Refuses GC struct and array types: objects on the GC heap are state that
/// no export can reach, so a snapshot could not carry them.
fn check_types(types: TypesRef<'_>) -> Result<(), PrepareError> {
    for index in 0..types.core_type_count_in_module() {
        let kind = match &types[types.core_type_at_in_module(index)]
            .composite_type
            .inner
        {
            CompositeInnerType::Func(_) => continue,
            CompositeInnerType::Struct(_) => "struct",
            CompositeInnerType::Array(_) => "array",
            CompositeInnerType::Cont(_) => "continuation",
        };
        return Err(PrepareError::GcType { index, kind });
    }
    Ok(())
}

fn check_export_func(
    types: TypesRef<'_>,
    export: &Export<'_>,
    signature: &Signature,
) -> Result<(), PrepareError> {
    let wrong = || PrepareError::ExportSignature {
        name: export.name.to_string(),
        expected: signature.describe(),
        found: describe_export(types, export),
    };
    if !matches!(export.kind, ExternalKind::Func | ExternalKind::FuncExact) {
        return Err(wrong());
    }
    let ty = types[types.core_function_at(export.index)].unwrap_func();
    if signature.matches(ty) {
        Ok(())
    } else {
        Err(wrong())
    }
}

/// What an export is, for error messages.
fn describe_export(types: TypesRef<'_>, export: &Export<'_>) -> String {
    match export.kind {
        ExternalKind::Func | ExternalKind::FuncExact => {
            describe_func(types[types.core_function_at(export.index)].unwrap_func())
        }
        ExternalKind::Table => format!("table {}", export.index),
        ExternalKind::Memory => format!("memory {}", export.index),
        ExternalKind::Global => format!("global {}", export.index),
        ExternalKind::Tag => format!("tag {}", export.index),
    }
}

/// A module may carry `__roam_` exports only if they are exactly the ones
/// prepare would add — that is, it was prepared before. Anything else under
/// the prefix would be silently dropped or would shadow the real state.
fn check_reserved_exports(
    reserved: &[Export<'_>],
    globals: &[GlobalInfo],
    tables: &[TableInfo],
    table_funcs: &[FuncExport],
) -> Result<(), PrepareError> {
    for export in reserved {
        let expected = match export.kind {
            ExternalKind::Global => globals
                .iter()
                .any(|global| global.index == export.index && global.export == export.name),
            ExternalKind::Table => tables
                .iter()
                .any(|table| table.index == export.index && table.export == export.name),
            ExternalKind::Func => table_funcs
                .iter()
                .any(|func| func.index == export.index && func.export == export.name),
            ExternalKind::Memory | ExternalKind::Tag | ExternalKind::FuncExact => false,
        };
        if !expected {
            return Err(PrepareError::ReservedExport {
                name: export.name.to_string(),
            });
        }
    }
    Ok(())
}

/// Adds every function a `ref.func` in `expr` names.
fn collect_ref_funcs(expr: &ConstExpr<'_>, into: &mut BTreeSet<u32>) -> Result<(), PrepareError> {
    let mut reader = expr.get_operators_reader();
    while !reader.eof() {
        if let Operator::RefFunc { function_index } =
            reader.read().map_err(PrepareError::invalid)?
        {
            into.insert(function_index);
        }
    }
    Ok(())
}

/// The value of an integer constant expression known before instantiation.
#[derive(Debug, Clone, Copy)]
enum Constant {
    I32(i32),
    I64(i64),
}

/// Evaluates a constant expression made of integer constants, `global.get`
/// of globals already known, and the extended-const arithmetic; anything else
/// is unknown.
fn evaluate(expr: &ConstExpr<'_>, globals: &[Option<Constant>]) -> Option<Constant> {
    let mut stack: Vec<Constant> = Vec::new();
    let mut reader = expr.get_operators_reader();
    loop {
        let operator = reader.read().ok()?;
        let value = match operator {
            Operator::End => break,
            Operator::I32Const { value } => Constant::I32(value),
            Operator::I64Const { value } => Constant::I64(value),
            Operator::GlobalGet { global_index } => {
                (*globals.get(usize::try_from(global_index).ok()?)?)?
            }
            Operator::I32Add | Operator::I32Sub | Operator::I32Mul => {
                let (Constant::I32(b), Constant::I32(a)) = (stack.pop()?, stack.pop()?) else {
                    return None;
                };
                Constant::I32(match operator {
                    Operator::I32Add => a.wrapping_add(b),
                    Operator::I32Sub => a.wrapping_sub(b),
                    _ => a.wrapping_mul(b),
                })
            }
            Operator::I64Add | Operator::I64Sub | Operator::I64Mul => {
                let (Constant::I64(b), Constant::I64(a)) = (stack.pop()?, stack.pop()?) else {
                    return None;
                };
                Constant::I64(match operator {
                    Operator::I64Add => a.wrapping_add(b),
                    Operator::I64Sub => a.wrapping_sub(b),
                    _ => a.wrapping_mul(b),
                })
            }
            _ => return None,
        };
        stack.push(value);
    }
    match stack.as_slice() {
        [value] => Some(*value),
        _ => None,
    }
}

/// The byte ranges of memory a fresh instance may have non-zero.
fn data_ranges(
    readers: &Readers<'_>,
    memory: &MemoryInfo,
    constants: &[Option<Constant>],
) -> Result<Vec<Range<u64>>, PrepareError> {
    let initial = memory.min_pages.saturating_mul(PAGE_SIZE);
    if readers.has_start {
        // The start function runs on every instantiation, restores included,
        // and may write anywhere in memory and grow it first.
        let pages = memory.max_pages.unwrap_or(MAX_PAGES_32).min(MAX_PAGES_32);
        let whole = pages.saturating_mul(PAGE_SIZE).max(initial);
        return Ok(if whole == 0 {
            Vec::new()
        } else {
            std::iter::once(0..whole).collect()
        });
    }
    let mut ranges = Vec::new();
    if let Some(reader) = readers.data.clone() {
        for data in reader {
            let data = data.map_err(PrepareError::invalid)?;
            let DataKind::Active { offset_expr, .. } = data.kind else {
                continue;
            };
            if data.data.is_empty() {
                continue;
            }
            // Memory64 is refused, so the offset is an i32, read as unsigned.
            let range = match evaluate(&offset_expr, constants) {
                Some(Constant::I32(offset)) => {
                    let start = u64::from(offset as u32);
                    start..start + data.data.len() as u64
                }
                _ => 0..initial,
            };
            if !range.is_empty() {
                ranges.push(range);
            }
        }
    }
    Ok(merge(ranges))
}

/// Sorts ranges and joins those that overlap or touch.
fn merge(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_by_key(|range| (range.start, range.end));
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn merge_joins_overlapping_and_touching_ranges() {
        assert_eq!(
            merge(vec![10..20, 0..5, 5..8, 15..30, 40..41]),
            vec![0..8, 10..30, 40..41]
        );
        assert_eq!(merge(vec![]), Vec::<std::ops::Range<u64>>::new());
    }
}
