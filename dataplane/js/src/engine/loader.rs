//! Where a runtime's modules come from (a script's bundle, or the disk while a script is
//! first loaded), for QuickJS's module loader: part of `engine`, used by `Engine::build`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use rquickjs::loader::{ImportAttributes, Loader, Resolver};
use rquickjs::module::Declared;
use rquickjs::{Ctx, Module};

use crate::script::{Disk, resolve};

/// Where a runtime's modules come from.
#[derive(Clone)]
pub(super) enum Source {
    Bundle(HashMap<String, Arc<[u8]>>),
    Disk(Rc<RefCell<Disk>>),
}

pub(super) struct ModuleResolver;

impl Resolver for ModuleResolver {
    fn resolve<'js>(
        &mut self,
        _ctx: &Ctx<'js>,
        base: &str,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        resolve(base, name).map_err(|m| rquickjs::Error::new_resolving_message(base, name, m))
    }
}

pub(super) struct ModuleLoader(pub(super) Source);

impl Loader for ModuleLoader {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js, Declared>> {
        let source = match &self.0 {
            Source::Bundle(modules) => modules
                .get(name)
                .cloned()
                .ok_or_else(|| rquickjs::Error::new_loading(name))?,
            Source::Disk(disk) => disk
                .borrow_mut()
                .read(name)
                .map_err(|m| rquickjs::Error::new_loading_message(name, m))?,
        };
        Module::declare(ctx.clone(), name, source.to_vec())
    }
}
