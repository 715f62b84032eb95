//! Item catalog: the metadata of every item a bundle knows (categories, creator, publish time,
//! policy flag, promotion), addressed by dense [`ItemIdx`], plus the category vocabulary.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ItemIdx;

/// One catalog item. `categories` index into [`Catalog::categories`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: u64,
    pub title: String,
    pub categories: Vec<u32>,
    pub creator_id: u64,
    /// Unix seconds.
    pub published_at: i64,
    /// Policy-flagged items are never served.
    pub flagged: bool,
    pub promoted: bool,
}

/// All items of a bundle, densely indexed, with an id → index map.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub items: Vec<Item>,
    pub categories: Vec<String>,
    index: HashMap<u64, ItemIdx>,
}

impl Catalog {
    pub fn new(items: Vec<Item>, categories: Vec<String>) -> Self {
        let index = items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.id, i as ItemIdx))
            .collect();
        Self {
            items,
            categories,
            index,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn idx(&self, item_id: u64) -> Option<ItemIdx> {
        self.index.get(&item_id).copied()
    }

    pub fn get(&self, idx: ItemIdx) -> Option<&Item> {
        self.items.get(idx as usize)
    }

    pub fn category_idx(&self, name: &str) -> Option<u32> {
        self.categories
            .iter()
            .position(|c| c == name)
            .map(|p| p as u32)
    }
}

impl Catalog {
    /// Writes the catalog as a bundle table; the category vocabulary travels in its metadata.
    pub fn save(&self, path: &std::path::Path) -> Result<(), crate::table::DataError> {
        use crate::table::{Column, Table};
        let vocab = serde_json::to_string(&self.categories)
            .map_err(|e| crate::table::DataError::format(path, e.to_string()))?;
        let cats: Vec<String> = self
            .items
            .iter()
            .map(|it| {
                it.categories
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        Table::new()
            .with(
                "item_id",
                Column::U64(self.items.iter().map(|i| i.id).collect()),
            )
            .with(
                "title",
                Column::Utf8(self.items.iter().map(|i| i.title.clone()).collect()),
            )
            .with("category_idx", Column::Utf8(cats))
            .with(
                "creator_id",
                Column::U64(self.items.iter().map(|i| i.creator_id).collect()),
            )
            .with(
                "published_at",
                Column::I64(self.items.iter().map(|i| i.published_at).collect()),
            )
            .with(
                "flagged",
                Column::Bool(self.items.iter().map(|i| i.flagged).collect()),
            )
            .with(
                "promoted",
                Column::Bool(self.items.iter().map(|i| i.promoted).collect()),
            )
            .meta("categories", vocab)
            .write(path)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, crate::table::DataError> {
        use crate::table::{DataError, Table};
        let mut t = Table::read(path)?;
        let bad = |m: String| DataError::format(path, m);
        let categories: Vec<String> = serde_json::from_str(
            t.metadata
                .get("categories")
                .map(String::as_str)
                .unwrap_or("[]"),
        )
        .map_err(|e| bad(format!("category vocabulary: {e}")))?;
        let ids = t.take_u64("item_id").map_err(bad)?;
        let titles = t.take_utf8("title").map_err(bad)?;
        let cats = t.take_utf8("category_idx").map_err(bad)?;
        let creators = t.take_u64("creator_id").map_err(bad)?;
        let published = t.take_i64("published_at").map_err(bad)?;
        let flagged = t.take_bool("flagged").map_err(bad)?;
        let promoted = t.take_bool("promoted").map_err(bad)?;
        let mut items = Vec::with_capacity(ids.len());
        for (k, id) in ids.into_iter().enumerate() {
            let categories_k = cats[k]
                .split_whitespace()
                .map(|c| match c.parse::<u32>() {
                    Ok(v) if (v as usize) < categories.len() => Ok(v),
                    _ => Err(bad(format!("row {k}: bad category index {c:?}"))),
                })
                .collect::<Result<Vec<u32>, _>>()?;
            items.push(Item {
                id,
                title: titles[k].clone(),
                categories: categories_k,
                creator_id: creators[k],
                published_at: published[k],
                flagged: flagged[k],
                promoted: promoted[k],
            });
        }
        Ok(Catalog::new(items, categories))
    }
}
