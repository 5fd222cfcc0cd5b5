MODEL (
  name shop.products,
  kind SEED (
    path '../seeds/products.csv'
  ),
  columns (
    product_id INTEGER,
    name TEXT,
    category TEXT,
    price DECIMAL(10, 2)
  ),
  grain product_id,
  description 'The product catalogue.'
);
